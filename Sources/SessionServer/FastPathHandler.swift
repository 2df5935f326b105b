import NIOCore
import NIOPosix
import SessionKeeper
import UnixListener
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
/// hop). Everything else goes up the pipeline to the connection's task as a `SlowRequest`.
///
/// A plain `session.get` is read by `RPCScanner` straight from the line's bytes, without a JSON tree; anything
/// else goes through the full decoder. The answers of one read burst are gathered in one buffer, written and
/// flushed once when the burst ends: a client that pipelines gets one write for many answers.
final class FastPathHandler: ChannelInboundHandler {
    typealias InboundIn = InboundLine
    typealias InboundOut = SlowRequest
    typealias OutboundOut = ByteBuffer

    private let service: SocketService
    private let peer: PeerCredentials
    private let flags: ConnectionFlags
    /// Answers of the current read burst, not yet written.
    private var output: ByteBuffer?
    /// The last context this connection was granted (its first grant to this caller is logged, not every one).
    private var lastGranted: String?

    init(service: SocketService, peer: PeerCredentials, flags: ConnectionFlags) {
        self.service = service
        self.peer = peer
        self.flags = flags
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .oversize:
            append(context, RPCCodec.error(id: .null, .invalidRequest,
                                           "Invalid Request: line longer than \(RPCCodec.maxLineBytes) bytes"))
            flushOutput(context)
            context.close(promise: nil)
        case .line(let buffer):
            guard buffer.readableBytes > 0 else { return }
            let answered = context.channel.isWritable && buffer.withUnsafeReadableBytes { bytes in
                guard let scanned = RPCScanner.sessionGet(bytes) else { return false }
                return answer(context, scanned)
            }
            if !answered { handle(context, buffer.readableBytesView) }
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        flushOutput(context)
        context.fireChannelReadComplete()
    }

    /// A scanned `session.get`, answered here when the hot path can; false: the full path decides.
    private func answer(_ context: ChannelHandlerContext, _ request: RPCScanner.SessionGet) -> Bool {
        switch service.sessionGetFast(context: request.context, peer: peer, logged: lastGranted == request.context) {
        case .granted(let result):
            lastGranted = request.context
            var buffer = output ?? context.channel.allocator.buffer(capacity: 1_024)
            buffer.writeBytes(RPCCodec.resultPrefix)
            buffer.writeString(request.id.json)
            buffer.writeBytes(RPCCodec.resultInfix)
            buffer.writeBytes(result)
            buffer.writeBytes(RPCCodec.resultSuffix)
            output = buffer
            return true
        case .unknown:
            append(context, RPCCodec.error(id: request.id, .unknownContext, "Unknown context: \(request.context)"))
            return true
        case .slow:
            return false
        }
    }

    private func handle(_ context: ChannelHandlerContext, _ line: ByteBufferView) {
        let request: RPCRequest
        switch RPCCodec.parse(line) {
        case .failure(let error):
            service.metrics.countInvalid(error.code)
            append(context, RPCCodec.error(id: error.id, error.code, error.message))
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
            append(context, answer)
            return
        }
        // Measured (make bench): signing here, with the key already parsed, rather than on the thread pool raises
        // signatures per CPU-second from 86% to 89% of `openssl speed` and lowers session.get's p99 meanwhile.
        if request.method == RPCMethod.requestSign.rawValue, let (signContext, body) = service.signInput(request, peer: peer) {
            if service.signsInline, let answer = service.signInline(signContext, body, id: id) {
                // Flushed at once: 0.2 ms of signing is long enough that batching its answer with later ones only
                // delays it.
                append(context, answer)
                flushOutput(context)
                return
            }
            if !service.signsInline {
                sign(context, signContext, body, id: id)
                return
            }
        }
        _ = flags.pending.wrappingAdd(1, ordering: .relaxed)
        context.fireChannelRead(wrapInboundOut(SlowRequest(request: request, id: id)))
    }

    /// Signs on SwiftNIO's blocking pool (a thread per core) and answers on this loop: with fewer event loops
    /// than cores, signing inline would leave cores idle. The key is read from the store there on a first use.
    private func sign(_ context: ChannelHandlerContext, _ signContext: String, _ body: [UInt8], id: RPCID) {
        _ = flags.pending.wrappingAdd(1, ordering: .relaxed)
        let (service, flags) = (self.service, self.flags)
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        NIOThreadPool.singleton.runIfActive(eventLoop: context.eventLoop) {
            service.signBlocking(signContext, body, id: id)
        }.whenComplete { result in
            _ = flags.pending.wrappingSubtract(1, ordering: .relaxed)
            guard case .success(let answer) = result else { return }
            bound.value.writeAndFlush(NIOAny(ByteBuffer(bytes: answer)), promise: nil)
        }
    }

    private func append(_ context: ChannelHandlerContext, _ bytes: [UInt8]) {
        var buffer = output ?? context.channel.allocator.buffer(capacity: max(1_024, bytes.count))
        buffer.writeBytes(bytes)
        output = buffer
    }

    /// Writes and flushes the burst's answers, if any.
    private func flushOutput(_ context: ChannelHandlerContext) {
        guard let buffer = output else { return }
        output = nil
        context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
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
