import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import ServiceLifecycle
import SessionKeeper
import SessionServer
import Synchronization

/// The bunq API proxy: HTTP/1.1 on the Unix socket `proxy.socket` (mode 0660, the JSON-RPC socket's directory
/// rules and access rules). An application sends bunq's path and body with `X-Bunq-Context: NAME`; the daemon
/// signs it, sends it in that context's current session within the daemon's per-IP rate limits, verifies bunq's
/// answer and passes it back unchanged.
///
/// Bounds: connections (in all, per uid, a reserve for admins), the header section, the body, idle and
/// per-request read timeouts, and a client that does not read its answers is held back and then disconnected.
public final class ProxyServer: Service, Sendable {
    public struct Limits: Sendable {
        public var maxConnections = 1_024
        public var maxConnectionsPerUID = 64
        public var maxBodyBytes = 1 << 20
        /// The header section of a request (names and values together).
        public var maxHeaderBytes = 16 * 1_024
        /// Between requests, and for one request's head and body.
        public var idleTimeout: Duration = .seconds(60)
        /// For the rate-limit slot and bunq's answer together (`proxy.timeout`).
        public var timeout: Duration = .seconds(30)
        /// A connection that leaves its answers unread for this long is closed.
        public var sendTimeout: Duration = .seconds(30)
        public init() {}
    }

    public let path: String
    /// A listening socket inherited from systemd (the `.socket` unit's `proxy`); nil: bind `path` ourselves.
    public let inheritedSocket: Int32?
    let limits: Limits
    let forwarder: ProxyForwarder
    let access: AccessControl
    let logger: Logger
    private let connections = Atomic<Int>(0)
    private let perUID = Mutex<[UInt32: Int]>([:])
    /// Fires once the socket accepts connections.
    public let listening = OneShotSignal()

    /// `access` is the JSON-RPC socket's (a reload that changes it applies to both).
    public init(path: String, inheritedSocket: Int32? = nil, keeper: Keeper, access: AccessControl, limits: Limits,
                logger: Logger) {
        self.path = path
        self.inheritedSocket = inheritedSocket
        self.limits = limits
        self.access = access
        var proxyLogger = logger
        proxyLogger[metadataKey: "bunq.component"] = "proxy"
        self.logger = proxyLogger
        forwarder = ProxyForwarder(keeper: keeper, access: access, timeout: limits.timeout, logger: proxyLogger)
    }

    public var connectionCount: Int { connections.load(ordering: .relaxed) }

    enum Accepted: Sendable {
        case connection(NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>, PeerCredentials)
        case rejected
    }

    public func run() async throws {
        let bootstrap = ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.backlog, value: 256)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelOption(.writeBufferWaterMark, value: .init(low: 16 * 1_024, high: 64 * 1_024))
        let server: NIOAsyncChannel<Accepted, Never>
        var boundInode: ino_t?
        do {
            if let inheritedSocket {
                server = try await bootstrap.bind(inheritedSocket) { [self] channel in initialize(channel) }
                logger.info("proxy listening on the socket systemd passed", metadata: ["bunq.socket": "\(path)"])
            } else {
                try SocketServer.prepare(path)
                server = try await bootstrap.bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true) { [self] channel in
                    initialize(channel)
                }
                boundInode = SocketServer.inode(path)
                chmod(path, 0o660)
                logger.info("proxy listening", metadata: ["bunq.socket": "\(path)"])
            }
        } catch {
            listening.fail()
            throw SocketServerError("proxy.socket \(path): \(error)")
        }
        listening.fire()
        defer { if inheritedSocket == nil, let boundInode, SocketServer.inode(path) == boundInode { unlink(path) } }
        let channel = server.channel
        try await withTaskCancellationHandler {
            try await withGracefulShutdownHandler {
                try await server.executeThenClose { accepted in
                    await withDiscardingTaskGroup { group in
                        do {
                            for try await connection in accepted {
                                guard case .connection(let channel, let peer) = connection else { continue }
                                group.addTask { [self] in
                                    await ProxyConnection(channel: channel, peer: peer, forwarder: forwarder,
                                                          maxBodyBytes: limits.maxBodyBytes).run()
                                    release(peer)
                                }
                            }
                        } catch {
                            logger.warning("the proxy's listening socket failed", metadata: ["error": "\(error)"])
                        }
                        group.cancelAll()
                    }
                }
            } onGracefulShutdown: {
                channel.close(promise: nil)
            }
        } onCancel: {
            channel.close(promise: nil)
        }
    }

    /// Admits a connection by its caller's uid, then sets up HTTP/1.1 with the proxy's limits.
    private func initialize(_ channel: any Channel) -> EventLoopFuture<Accepted> {
        PeerCredentials.read(channel).flatMapThrowing { [self] peer in
            guard admit(peer) else {
                try channel.pipeline.syncOperations.addHandler(TooManyConnectionsHandler())
                return .rejected
            }
            do {
                var decoderLimits = NIOHTTPDecoderLimitConfiguration()
                decoderLimits.maxHeaderListSize = limits.maxHeaderBytes
                decoderLimits.maxHeaderFieldSize = limits.maxHeaderBytes
                decoderLimits.maxHeaderFieldCount = 256
                let sync = channel.pipeline.syncOperations
                try sync.addHandler(WriteStallHandler(sendTimeout: Self.amount(limits.sendTimeout), peer: peer, logger: logger))
                try sync.configureHTTPServerPipeline(withPipeliningAssistance: true, withErrorHandling: false,
                                                     withEncoderConfiguration: .init(),
                                                     withDecoderLimitConfiguration: decoderLimits)
                try sync.addHandlers([ProxyProtocolErrorHandler(), ProxyTimeoutHandler(timeout: Self.amount(limits.idleTimeout))])
                let wrapped = try NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>(
                    wrappingChannelSynchronously: channel, configuration: .init(isOutboundHalfClosureEnabled: true))
                return .connection(wrapped, peer)
            } catch {
                release(peer)
                throw error
            }
        }
    }

    static func amount(_ duration: Duration) -> TimeAmount { .milliseconds(Int64(duration / .milliseconds(1))) }

    private func admit(_ peer: PeerCredentials) -> Bool {
        let total = connections.wrappingAdd(1, ordering: .relaxed).newValue
        let admin = access.isAdmin(peer)
        let allowed = total <= limits.maxConnections + (admin ? SocketServer.Limits.adminReserve : 0)
            && perUID.withLock { counts in
                guard admin || counts[peer.uid, default: 0] < limits.maxConnectionsPerUID else { return false }
                counts[peer.uid, default: 0] += 1
                return true
            }
        if !allowed { _ = connections.wrappingSubtract(1, ordering: .relaxed) }
        return allowed
    }

    private func release(_ peer: PeerCredentials) {
        _ = connections.wrappingSubtract(1, ordering: .relaxed)
        perUID.withLock { counts in
            guard let count = counts[peer.uid] else { return }
            counts[peer.uid] = count > 1 ? count - 1 : nil
        }
    }
}

/// Answers a connection over the limits with 503 `too_many_connections` and closes it, reading nothing.
final class TooManyConnectionsHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    func channelActive(context: ChannelHandlerContext) {
        let reply = ProxyReply.error(.tooManyConnections, "Too many connections to the proxy.", retryAfter: .seconds(1))
        var text = "HTTP/1.1 503 Service Unavailable\r\n"
        for (name, value) in reply.head(version: .http1_1, keepAlive: false).headers { text += "\(name): \(value)\r\n" }
        var buffer = context.channel.allocator.buffer(string: text + "\r\n")
        var body = reply.body
        buffer.writeBuffer(&body)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(buffer)).whenComplete { _ in channel.close(promise: nil) }
    }
}
