import Logging
import NIOCore

/// Back-pressure towards a client that does not read what it is sent: while the connection's unsent output is
/// above the write-buffer high-water mark, nothing more is read from it (its requests wait in the kernel, not in
/// our memory); and a connection that stays that way for the send timeout is closed (a subscriber that never
/// reads its notifications is disconnected rather than holding memory for ever).
/// Shared by the JSON-RPC socket and the bunq API proxy (first in each connection's pipeline).
public final class WriteStallHandler: ChannelDuplexHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = ByteBuffer
    public typealias OutboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    private let sendTimeout: TimeAmount
    private let peer: PeerCredentials
    private let logger: Logger
    private var readPending = false
    private var stall: Scheduled<Void>?

    public init(sendTimeout: TimeAmount, peer: PeerCredentials, logger: Logger) {
        self.sendTimeout = sendTimeout
        self.peer = peer
        self.logger = logger
    }

    public func read(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            context.read()
        } else {
            readPending = true
        }
    }

    public func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            stall?.cancel()
            stall = nil
            if readPending {
                readPending = false
                context.read()
            }
        } else if stall == nil {
            let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            stall = context.eventLoop.scheduleTask(in: sendTimeout) {
                let (handler, context) = loopBound.value
                handler.stall = nil
                guard !context.channel.isWritable else { return }
                handler.logger.notice("closing a connection that does not read what it is sent", metadata: [
                    "bunq.peer_pid": "\(handler.peer.pid)", "bunq.peer_uid": "\(handler.peer.uid)",
                ])
                context.close(promise: nil)
            }
        }
        context.fireChannelWritabilityChanged()
    }

    public func channelInactive(context: ChannelHandlerContext) {
        stall?.cancel()
        stall = nil
        context.fireChannelInactive()
    }
}
