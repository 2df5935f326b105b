import NIOCore
import SessionKeeper
import SessionProtocol
import Synchronization

/// A request the fast path left to the connection's task: parsed, with an id (notifications are dropped).
struct SlowRequest: Sendable {
    let request: RPCRequest
    let id: RPCID
}

/// What a connection's task and its event-loop handlers share: whether it subscribes and how many requests it
/// has outstanding (neither such connection is idle).
final class ConnectionFlags: Sendable {
    let subscribed = Atomic<Bool>(false)
    let pending = Atomic<Int>(0)
}

/// The inline part of a connection, on its event loop: framed lines in; parse errors, a cached `session.get` and
/// a `request.sign` whose key is parsed are answered right here (the token path's speed comes from this: no task
/// hop, answers flushed once per read burst). Everything else goes up the pipeline to the connection's task as a
/// `SlowRequest`.
final class FastPathHandler: ChannelInboundHandler {
    typealias InboundIn = InboundLine
    typealias InboundOut = SlowRequest
    typealias OutboundOut = ByteBuffer

    private let service: SocketService
    private let peer: PeerCredentials
    private let flags: ConnectionFlags
    private var needsFlush = false

    init(service: SocketService, peer: PeerCredentials, flags: ConnectionFlags) {
        self.service = service
        self.peer = peer
        self.flags = flags
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .oversize:
            write(context, RPCCodec.error(id: .null, .invalidRequest,
                                          "Invalid Request: line longer than \(RPCCodec.maxLineBytes) bytes"))
            context.writeAndFlush(wrapOutboundOut(ByteBuffer()), promise: nil)
            context.close(promise: nil)
        case .line(let buffer):
            guard buffer.readableBytes > 0 else { return }
            handle(context, buffer.readableBytesView)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if needsFlush {
            needsFlush = false
            context.flush()
        }
        context.fireChannelReadComplete()
    }

    private func handle(_ context: ChannelHandlerContext, _ line: ByteBufferView) {
        let request: RPCRequest
        switch RPCCodec.parse(line) {
        case .failure(let error):
            service.metrics.countInvalid(error.code)
            write(context, RPCCodec.error(id: error.id, error.code, error.message))
            return
        case .success(let parsed):
            request = parsed
        }
        // A request without an id is a notification: JSON-RPC answers none.
        guard let id = request.id else { return }
        // While the client leaves its answers unread, everything takes the slow path, whose requests and answers
        // are bounded per connection (the fast path would buffer answers without limit).
        guard context.channel.isWritable else {
            _ = flags.pending.wrappingAdd(1, ordering: .relaxed)
            context.fireChannelRead(wrapInboundOut(SlowRequest(request: request, id: id)))
            return
        }
        if request.method == RPCMethod.sessionGet.rawValue, let answer = service.sessionGetFast(request, id: id, peer: peer) {
            write(context, answer)
            return
        }
        // Measured (make bench): signing here, with the key already parsed, rather than on the thread pool raises
        // signatures per CPU-second from 86% to 89% of `openssl speed` and lowers session.get's p99 meanwhile.
        if request.method == RPCMethod.requestSign.rawValue, let (signContext, body) = service.signInput(request, peer: peer),
           let answer = service.signInline(signContext, body, id: id) {
            // Flushed at once: 0.2 ms of signing is long enough that batching its answer with later ones only
            // delays it.
            context.writeAndFlush(wrapOutboundOut(ByteBuffer(bytes: answer)), promise: nil)
            return
        }
        _ = flags.pending.wrappingAdd(1, ordering: .relaxed)
        context.fireChannelRead(wrapInboundOut(SlowRequest(request: request, id: id)))
    }

    private func write(_ context: ChannelHandlerContext, _ bytes: [UInt8]) {
        context.write(wrapOutboundOut(ByteBuffer(bytes: bytes)), promise: nil)
        needsFlush = true
    }
}

/// Answers a connection over the limit with an error line once it is active, then closes it.
final class RejectHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    func channelActive(context: ChannelHandlerContext) {
        let line = RPCCodec.error(id: .null, .internalError, "Too many connections")
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(ByteBuffer(bytes: line))).whenComplete { _ in channel.close(promise: nil) }
    }
}
