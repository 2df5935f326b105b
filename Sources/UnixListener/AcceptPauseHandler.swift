import Glibc
import Logging
import NIOCore

/// Stops accepting for a moment when `accept` fails for lack of descriptors or memory (EMFILE, ENFILE, ENOBUFS,
/// ENOMEM), instead of spinning. The listening socket stays readable while its backlog holds connections, and
/// NIO's own `AcceptBackoffHandler` only delays the next `read()` while the socket stays registered for readability
/// (a failed accept leaves the read pending), so epoll wakes the loop at once, again and again: a full core for as
/// long as the shortage lasts. Turning `autoRead` off unregisters the socket; turning it on after `pause`
/// registers it again.
final class AcceptPauseHandler: ChannelInboundHandler {
    typealias InboundIn = any Channel
    typealias InboundOut = any Channel

    /// The first pause; each further one in a row doubles, up to `maxPause`; an accepted connection resets it.
    static let pause = TimeAmount.milliseconds(200)
    static let maxPause = TimeAmount.seconds(2)
    private var nextPause = AcceptPauseHandler.pause
    private let name: String
    private let logger: Logger
    private var paused = false
    /// Pauses since the last warning, so a long shortage logs once a minute, not five times a second.
    private var pausesSinceWarning = 0
    private var lastWarning: NIODeadline?

    init(name: String, logger: Logger) {
        self.name = name
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        nextPause = Self.pause
        context.fireChannelRead(data)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard let error = error as? IOError, [EMFILE, ENFILE, ENOBUFS, ENOMEM].contains(error.errnoCode) else {
            context.fireErrorCaught(error)
            return
        }
        if !paused {
            paused = true
            pausesSinceWarning += 1
            let now = NIODeadline.now()
            if lastWarning.map({ now - $0 >= .seconds(60) }) ?? true {
                logger.warning("cannot accept connections: out of file descriptors or memory; pausing accept", metadata: [
                    "error": "\(error)", "bunq.pauses": "\(pausesSinceWarning)", "bunq.listener": "\(name)",
                ])
                lastWarning = now
                pausesSinceWarning = 0
            }
            try? context.channel.syncOptions?.setOption(.autoRead, value: false)
            let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            let pause = nextPause
            nextPause = min(nextPause * 2, Self.maxPause)
            context.eventLoop.scheduleTask(in: pause) {
                let (handler, context) = loopBound.value
                handler.paused = false
                try? context.channel.syncOptions?.setOption(.autoRead, value: true)
            }
        }
        context.fireErrorCaught(error)
    }
}
