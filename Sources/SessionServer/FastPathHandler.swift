import Logging
import NIOCore
import NIOPosix
import SessionKeeper
import SessionProtocol

/// One client connection: framed lines in, response lines out. `session.get` is answered inline; other methods
/// run as tasks and answer when done (each request gets exactly one response, matched by its id). Confined to
/// its event loop.
final class RPCConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = InboundLine
    typealias OutboundOut = ByteBuffer

    /// Unanswered requests allowed per connection; beyond it, reading pauses until answers go out.
    static let maxPending = 64

    private let service: SocketService
    private let peer: PeerCredentials
    private let onClose: @Sendable () -> Void
    private var pending = 0
    private var subscription: Int?
    private var needsFlush = false

    init(service: SocketService, peer: PeerCredentials, onClose: @escaping @Sendable () -> Void) {
        self.service = service
        self.peer = peer
        self.onClose = onClose
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
    }

    private func handle(_ context: ChannelHandlerContext, _ line: ByteBufferView) {
        let request: RPCRequest
        switch RPCCodec.parse(line) {
        case .failure(let error):
            write(context, RPCCodec.error(id: error.id, error.code, error.message))
            return
        case .success(let parsed):
            request = parsed
        }
        // A request without an id is a notification: JSON-RPC answers none.
        guard let id = request.id else { return }
        if request.method == RPCMethod.sessionGet.rawValue, let answer = service.sessionGetFast(request, id: id, peer: peer) {
            write(context, answer)
            return
        }
        let signInput = request.method == RPCMethod.requestSign.rawValue ? service.signInput(request, peer: peer) : nil
        // Measured (make bench): signing here, with the key already parsed, rather than on the thread pool raises
        // signatures per CPU-second from 86% to 89% of `openssl speed` and lowers session.get's p99 meanwhile.
        if let (signContext, body) = signInput, let answer = service.signInline(signContext, body, id: id) {
            // Flushed at once: 0.2 ms of signing is long enough that batching its answer with later ones only
            // delays it.
            context.writeAndFlush(wrapOutboundOut(ByteBuffer(bytes: answer)), promise: nil)
            return
        }
        pending += 1
        if pending >= Self.maxPending { context.channel.setOption(ChannelOptions.autoRead, value: false).whenComplete { _ in } }
        let service = self.service, peer = self.peer, channel = context.channel
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
        let loopContext = NIOLoopBound(context, eventLoop: context.eventLoop)
        if let (signContext, body) = signInput {
            // A first use reads the key from the store: off the event loop.
            NIOThreadPool.singleton.runIfActive(eventLoop: context.eventLoop) {
                service.signBlocking(signContext, body, id: id)
            }.whenComplete { result in
                handler.value.finish(loopContext.value, (try? result.get()) ?? RPCCodec.error(id: id, .internalError, "Internal error"))
            }
            return
        }
        context.eventLoop.makeFutureWithTask {
            await service.handle(request, id: id, peer: peer) { contexts in
                channel.eventLoop.execute { handler.value.subscribe(contexts, channel: channel) }
            }
        }.whenSuccess { answer in
            handler.value.finish(loopContext.value, answer)
        }
    }

    private func finish(_ context: ChannelHandlerContext, _ answer: [UInt8]) {
        pending -= 1
        context.writeAndFlush(wrapOutboundOut(ByteBuffer(bytes: answer)), promise: nil)
        if pending == Self.maxPending - 1, context.channel.isWritable {
            context.channel.setOption(ChannelOptions.autoRead, value: true).whenComplete { _ in }
        }
    }

    private func write(_ context: ChannelHandlerContext, _ bytes: [UInt8]) {
        context.write(wrapOutboundOut(ByteBuffer(bytes: bytes)), promise: nil)
        needsFlush = true
    }

    private func subscribe(_ contexts: [String], channel: any Channel) {
        if let subscription { service.keeper.events.cancel(subscription) }
        let wanted = Set(contexts)
        subscription = service.keeper.events.subscribe { event, entry in
            guard let (context, line) = SocketService.notification(event, entry), wanted.contains(context) else { return }
            channel.writeAndFlush(ByteBuffer(bytes: line), promise: nil)
        }
    }

    /// A client that does not read its answers stops being read, so its requests cannot pile up answers here.
    func channelWritabilityChanged(context: ChannelHandlerContext) {
        let resume = context.channel.isWritable && pending < Self.maxPending
        context.channel.setOption(ChannelOptions.autoRead, value: resume).whenComplete { _ in }
        context.fireChannelWritabilityChanged()
    }

    /// Idle connections are closed, except subscribers, who wait for notifications.
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent, subscription == nil {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let subscription { service.keeper.events.cancel(subscription) }
        subscription = nil
        onClose()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
