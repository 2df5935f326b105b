import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import ServiceLifecycle
import SessionKeeper
import SessionServer
import UnixListener

/// The bunq API proxy: HTTP/1.1 on the Unix socket `proxy.socket` (mode 0660, the JSON-RPC socket's directory
/// rules and access rules). An application sends bunq's path and body with `X-Bunq-Context: NAME`; the daemon
/// signs it, sends it in that context's current session within the daemon's per-IP rate limits, verifies bunq's
/// answer and passes it back unchanged.
///
/// Bounds: connections (in all, per uid, a reserve for admins), the header section, the body, idle and
/// per-request read timeouts, and a client that does not read its answers is held back and then disconnected.
public final class ProxyServer: Service, Sendable {
    public struct Limits: Sendable, Equatable {
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

    public var path: String { listener.settings.path }
    public var inheritedSocket: Int32? { listener.settings.inheritedSocket }
    let limits: Limits
    let forwarder: ProxyForwarder
    let access: AccessControl
    let logger: Logger
    let listener: UnixListener
    /// Fires once the socket accepts connections.
    public let listening = OneShotSignal()

    /// `access` is the JSON-RPC socket's (a reload that changes it applies to both).
    public init(path: String, inheritedSocket: Int32? = nil, keeper: Keeper, access: AccessControl, limits: Limits,
                logger: Logger) {
        self.limits = limits
        self.access = access
        var proxyLogger = logger
        proxyLogger[metadataKey: "bunq.component"] = "proxy"
        self.logger = proxyLogger
        forwarder = ProxyForwarder(keeper: keeper, access: access, timeout: limits.timeout, logger: proxyLogger)
        listener = UnixListener(settings: UnixListener.Settings(
            path: path, inheritedSocket: inheritedSocket, name: "proxy.socket", maxConnections: limits.maxConnections,
            maxConnectionsPerUID: limits.maxConnectionsPerUID, sendTimeout: limits.sendTimeout), logger: proxyLogger)
    }

    public var connectionCount: Int { listener.connectionCount }

    public func run() async throws {
        let limits = limits, access = access, forwarder = forwarder
        do {
            try await listener.run(
                childOptions: { $0.childChannelOption(.allowRemoteHalfClosure, value: true) },
                isAdmin: { access.isAdmin($0) },
                initialize: { channel, _ in
                    // HTTP/1.1 with the proxy's limits on the header section.
                    var decoderLimits = NIOHTTPDecoderLimitConfiguration()
                    decoderLimits.maxHeaderListSize = limits.maxHeaderBytes
                    decoderLimits.maxHeaderFieldSize = limits.maxHeaderBytes
                    decoderLimits.maxHeaderFieldCount = 256
                    let sync = channel.pipeline.syncOperations
                    try sync.configureHTTPServerPipeline(withPipeliningAssistance: true, withErrorHandling: false,
                                                         withEncoderConfiguration: .init(),
                                                         withDecoderLimitConfiguration: decoderLimits)
                    try sync.addHandlers([ProxyProtocolErrorHandler(),
                                          ProxyTimeoutHandler(timeout: UnixListener.amount(limits.idleTimeout))])
                    return try NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>(
                        wrappingChannelSynchronously: channel, configuration: .init(isOutboundHalfClosureEnabled: true))
                },
                reject: { channel in try channel.pipeline.syncOperations.addHandler(TooManyConnectionsHandler()) },
                onBound: { [listening] in listening.fire() },
                serve: { channel, peer in
                    await ProxyConnection(channel: channel, peer: peer, forwarder: forwarder,
                                          maxBodyBytes: limits.maxBodyBytes).run()
                })
        } catch {
            listening.fail()
            throw error
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
