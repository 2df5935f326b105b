import Foundation
import Logging
import Metrics
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus
import ServiceLifecycle
import SessionKeeper

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

    let listen: KeeperConfiguration.MetricsListen
    let registry: PrometheusCollectorRegistry
    let keeper: Keeper
    let logger: Logger

    public init(listen: KeeperConfiguration.MetricsListen, registry: PrometheusCollectorRegistry, keeper: Keeper, logger: Logger) {
        self.listen = listen
        self.registry = registry
        self.keeper = keeper
        self.logger = logger
    }

    public func run() async throws {
        let registry = registry
        let bootstrap = ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.backlog, value: 64)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(IdleStateHandler(allTimeout: .seconds(60)))
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(MetricsHTTPHandler(registry: registry))
                }
            }
        let channel: any Channel
        do {
            switch listen {
            case .tcp(let host, let port):
                channel = try await bootstrap.bind(host: host, port: port).get()
            case .unix(let path):
                channel = try await bootstrap.bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true).get()
            }
        } catch {
            logger.error("cannot listen for metrics", metadata: ["bunq.metrics": "\(listen)", "bunq.error": "\(error)"])
            throw error
        }
        logger.info("metrics listening", metadata: ["bunq.metrics": "\(listen)"])
        let gauges = StateGauges(registry: registry)
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                gauges.update(await self.keeper.metricsSnapshot())
                try? await Task.sleep(for: .seconds(2))
            }
        }
        try? await channel.close()
    }
}
