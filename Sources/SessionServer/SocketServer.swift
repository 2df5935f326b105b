import Metrics
import Foundation
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import SessionKeeper
import SessionProtocol
import Synchronization
import UnixListener

/// The Unix-socket JSON-RPC server: newline-delimited JSON-RPC 2.0 on `path` (mode 0660), callers identified by
/// `SO_PEERCRED`, fair bounds on connections (per uid, in all, a reserve for admins), idle and slow connections
/// closed, and clients that do not read held back and then disconnected.
public final class SocketServer: Service, Sendable {
    public struct Limits: Sendable, Equatable {
        /// Connections admins may open beyond `maxConnections`: whoever fills the socket, root gets in.
        public static let adminReserve = 16
        public var maxConnections = 4_096
        public var maxConnectionsPerUID = 64
        /// Time without a complete request after which a connection (not subscribed, nothing outstanding) is closed.
        public var idleTimeout: Duration = .seconds(300)
        /// Time a request may take from its first byte to its newline.
        public var requestTimeout: Duration = .seconds(10)
        /// Time a connection may leave what it is sent unread (its unsent output above the high-water mark)
        /// before it is closed.
        public var sendTimeout: Duration = .seconds(30)
        /// Unsent output per connection above which it is not read (and its send timeout runs).
        public static let writeBufferHighWater = 64 * 1_024
        public init() {}
    }

    public var path: String { listener.settings.path }
    public var inheritedSocket: Int32? { listener.settings.inheritedSocket }
    let service: SocketService
    let limits: Limits
    let logger: Logger
    let listener: UnixListener
    /// Fires once the socket accepts connections.
    public let listening = OneShotSignal()
    let memory: ConnectionMemory

    /// `releaseFreeMemory` asks the allocator to return freed memory to the system (glibc's `malloc_trim`); it is
    /// called, off the event loops, after connections that held a lot of memory have gone.
    public init(path: String, inheritedSocket: Int32? = nil, service: SocketService, limits: Limits = Limits(),
                logger: Logger, releaseFreeMemory: @escaping @Sendable () -> Void = {}) {
        memory = ConnectionMemory(release: releaseFreeMemory)
        self.service = service
        self.limits = limits
        self.logger = logger
        var settings = UnixListener.Settings(path: path, inheritedSocket: inheritedSocket, name: "socket",
                                             maxConnections: limits.maxConnections,
                                             maxConnectionsPerUID: limits.maxConnectionsPerUID, sendTimeout: limits.sendTimeout)
        settings.adminReserve = Limits.adminReserve
        settings.writeBufferHighWater = Limits.writeBufferHighWater
        listener = UnixListener(settings: settings, logger: logger)
    }

    public var connectionCount: Int { listener.connectionCount }

    public func run() async throws {
        let service = service, limits = limits, logger = logger, memory = memory
        do {
            try await withThrowingDiscardingTaskGroup { group in
                group.addTask { await memory.run() }
                defer { group.cancelAll() }
                try await listener.run(
                    childOptions: { bootstrap in
                        bootstrap
                            // A client that half-closes (`echo … | socat`) still gets every answer.
                            .childChannelOption(.allowRemoteHalfClosure, value: true)
                            // Reads of at most 16 KiB: a connection's receive buffer (kept between reads) stays small,
                            // and a long partial line lives in the framer's buffer alone rather than in a 64 KiB read
                            // buffer as well.
                            .childChannelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(
                                minimum: 64, initial: 1_024, maximum: 16 * 1_024))
                    },
                    isAdmin: { service.access.isAdmin($0) },
                    initialize: { channel, peer in
                        let flags = ConnectionFlags()
                        let timeouts = ConnectionTimeouts(idle: UnixListener.amount(limits.idleTimeout),
                                                          request: UnixListener.amount(limits.requestTimeout))
                        try channel.pipeline.syncOperations.addHandlers([
                            LineFramer(timeouts: timeouts, flags: flags, memory: memory, peer: peer, logger: logger),
                            FastPathHandler(service: service, peer: peer, flags: flags),
                        ])
                        // Outbound half-closure: the connection's last answers are flushed before it closes.
                        let wrapped = try NIOAsyncChannel<SlowRequest, ByteBuffer>(
                            wrappingChannelSynchronously: channel, configuration: .init(isOutboundHalfClosureEnabled: true))
                        return (wrapped, flags)
                    },
                    reject: { channel in try channel.pipeline.syncOperations.addHandler(RejectHandler()) },
                    onBound: { [listening] in listening.fire() },
                    serve: { connection, peer in
                        service.metrics.connections.increment()
                        await Connection(channel: connection.0, peer: peer, flags: connection.1, service: service).run()
                        service.metrics.connections.decrement()
                        memory.connectionEnded()
                    })
            }
        } catch {
            listening.fail()
            throw error
        }
    }

    /// Whether an event loop of the server runs tasks within `timeout`: the watchdog's proof that the server is
    /// not wedged.
    public func probe(timeout: Duration = .seconds(2)) async -> Bool {
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        return await withTaskGroup(of: Bool.self) { group in
            group.addTask { (try? await loop.submit { true }.get()) ?? false }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return false
            }
            let first = await group.next() ?? false
            group.cancelAll()
            return first
        }
    }

}
