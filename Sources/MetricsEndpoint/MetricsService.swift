import Foundation
import Logging
import Metrics
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus
import ServiceLifecycle
import SessionKeeper
import UnixListener

/// Serves the Prometheus text exposition at `GET /metrics` on `metrics.listen` (TCP or a Unix socket), and keeps
/// the gauges that describe state (contexts, expiries, budget, leases) current, refreshed every 2 s from the
/// keeper: a scrape only reads the registry, so scraping costs the token path nothing.
public final class MetricsService: Service {
    /// Bootstraps swift-metrics with a Prometheus backend; returns the registry the service exposes. Call once,
    /// before anything creates a metric.
    public static func bootstrap() -> PrometheusCollectorRegistry {
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        return registry
    }

    let listen: MetricsSettings.Listen
    let registry: PrometheusCollectorRegistry
    let keeper: Keeper
    let logger: Logger

    public init(listen: MetricsSettings.Listen, registry: PrometheusCollectorRegistry, keeper: Keeper, logger: Logger) {
        self.listen = listen
        self.registry = registry
        self.keeper = keeper
        self.logger = logger
    }

    public func run() async throws {
        switch listen {
        case .tcp(let host, let port):
            try await serveTCP(host: host, port: port)
        case .unix(let path):
            try await serveUnix(path: path)
        }
    }

    /// The scrape's pipeline: HTTP/1.1, idle connections closed after a minute.
    static func addHandlers(_ channel: any Channel, _ registry: PrometheusCollectorRegistry) throws {
        try channel.pipeline.syncOperations.addHandler(IdleStateHandler(allTimeout: .seconds(60)))
        try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
        try channel.pipeline.syncOperations.addHandler(MetricsHTTPHandler(registry: registry))
    }

    /// On a Unix socket: the daemon's one listener (mode 0660, peer credentials, admission, accept pause); a
    /// scraper is one or two connections, root may always get in.
    private func serveUnix(path: String) async throws {
        let registry = registry
        let listener = UnixListener(settings: UnixListener.Settings(path: path, name: "metrics.listen", maxConnections: 64,
                                                                    maxConnectionsPerUID: 16, sendTimeout: .seconds(30)),
                                    logger: logger)
        try await withThrowingDiscardingTaskGroup { group in
            group.addTask { [self] in await refreshGauges() }
            defer { group.cancelAll() }
            try await listener.run(
                isAdmin: { $0.uid == 0 },
                initialize: { channel, _ in
                    try Self.addHandlers(channel, registry)
                    return channel
                },
                reject: { channel in channel.close(promise: nil) },
                onBound: { [logger, listen] in logger.info("metrics listening", metadata: ["bunq.metrics": "\(listen)"]) },
                // Until the scraper or the idle timeout closes it, or shutdown does.
                serve: { channel, _ in
                    await withTaskCancellationHandler {
                        try? await channel.closeFuture.get()
                    } onCancel: {
                        channel.close(promise: nil)
                    }
                })
        }
    }

    private func serveTCP(host: String, port: Int) async throws {
        let registry = registry
        let bootstrap = ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.backlog, value: 64)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try Self.addHandlers(channel, registry) }
            }
        let channel: any Channel
        do {
            channel = try await bootstrap.bind(host: host, port: port).get()
        } catch {
            logger.error("cannot listen for metrics", metadata: ["bunq.metrics": "\(listen)", "bunq.error": "\(error)"])
            throw error
        }
        logger.info("metrics listening", metadata: ["bunq.metrics": "\(listen)"])
        await refreshGauges()
        try? await channel.close()
    }

    /// Keeps the state gauges current until shutdown.
    private func refreshGauges() async {
        let gauges = StateGauges(registry: registry)
        await cancelWhenGracefulShutdown {
            await every(.seconds(2), on: self.keeper.clock) { gauges.update(await self.keeper.metricsSnapshot()) }
        }
    }
}
