import Logging
import NIOCore
import SessionProtocol
import Synchronization
import UnixListener

/// One framed input: a line (without its `\n`, and without a trailing `\r`), or notice that a line exceeded the
/// limit (the connection is then answered -32600 and closed; nothing after it is read).
enum InboundLine {
    case line(ByteBuffer)
    case oversize
}

/// A connection's clocks, on its event loop: the idle timeout counts time without a complete request (bytes that
/// never end a line do not keep a connection alive: a slowloris is closed), and a partial line must end within the
/// request timeout. Subscribers and connections with answers outstanding are not idle; a partial line is bounded
/// for everyone.
struct ConnectionTimeouts: Sendable {
    var idle: TimeAmount
    var request: TimeAmount
}

/// Splits the byte stream at `\n` and holds the connection to its time limits. A partial line is kept in a buffer
/// sized to it (never a read buffer many times its size), refused beyond `RPCCodec.maxLineBytes`, and dropped as
/// soon as the line ends: an idle connection holds no input buffer at all.
final class LineFramer: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = InboundLine

    private let timeouts: ConnectionTimeouts
    private let flags: ConnectionFlags
    private let memory: ConnectionMemory
    private let logger: Logger
    private let peer: PeerCredentials
    /// The unfinished line, if any.
    private var partial: ByteBuffer?
    /// Bytes of buffer `partial` holds, as counted in `memory`.
    private var held = 0
    private var overflowed = false
    private var lastRequest = NIODeadline.now()
    private var partialSince: NIODeadline?
    private var timer: Scheduled<Void>?
    private var timerDeadline: NIODeadline?

    init(timeouts: ConnectionTimeouts, flags: ConnectionFlags, memory: ConnectionMemory, peer: PeerCredentials,
         logger: Logger) {
        self.timeouts = timeouts
        self.flags = flags
        self.memory = memory
        self.peer = peer
        self.logger = logger
    }

    func handlerAdded(context: ChannelHandlerContext) {
        lastRequest = .now()
        schedule(context, at: lastRequest + timeouts.idle)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        drop()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !overflowed else { return }
        var input = unwrapInboundIn(data)
        if partial == nil {
            partial = input
        } else {
            partial!.writeBuffer(&input)
        }
        var completed = false
        while let newline = partial!.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) {
            var length = newline - partial!.readerIndex
            guard length <= RPCCodec.maxLineBytes + 1 else { return overflow(context) }
            var line = partial!.readSlice(length: length)!
            partial!.moveReaderIndex(forwardBy: 1)
            if length > 0, line.getInteger(at: line.readerIndex + length - 1, as: UInt8.self) == UInt8(ascii: "\r") {
                length -= 1
                line = line.getSlice(at: line.readerIndex, length: length)!
            }
            guard length <= RPCCodec.maxLineBytes else { return overflow(context) }
            completed = true
            context.fireChannelRead(wrapInboundOut(.line(line)))
            // The line's handler may have closed the connection (and removed this handler).
            guard partial != nil else { return }
        }
        let now = NIODeadline.now()
        if completed { lastRequest = now }
        let remaining = partial!.readableBytes
        if remaining == 0 {
            partialSince = nil
            drop()
            return
        }
        guard remaining <= RPCCodec.maxLineBytes + 1 else { return overflow(context) }
        // Keep only the unfinished line, in a buffer of about its size: a read buffer of 64 KiB holding a few
        // bytes of a line must not stay allocated for as long as that line takes.
        if partial!.capacity > max(4_096, 2 * remaining) {
            var compact = context.channel.allocator.buffer(capacity: remaining)
            compact.writeBuffer(&partial!)
            partial = compact
        }
        account(partial!.capacity)
        if completed || partialSince == nil {
            partialSince = now
            if timerDeadline.map({ $0 > now + timeouts.request }) ?? true { schedule(context, at: now + timeouts.request) }
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // The client half-closed: an unfinished line will never end.
        if let event = event as? ChannelEvent, event == .inputClosed {
            partialSince = nil
            drop()
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        drop()
        context.fireChannelInactive()
    }

    /// Re-arms the one timer at `deadline` (a later read never re-arms it: when it fires, it looks at the clocks
    /// and re-arms for what is then due).
    private func schedule(_ context: ChannelHandlerContext, at deadline: NIODeadline) {
        timer?.cancel()
        timerDeadline = deadline
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(deadline: deadline) {
            let (framer, context) = loopBound.value
            framer.timer = nil
            framer.timerDeadline = nil
            framer.check(context)
        }
    }

    private func check(_ context: ChannelHandlerContext) {
        let now = NIODeadline.now()
        if let partialSince, now >= partialSince + timeouts.request {
            return close(context, "closing a connection whose request did not end within the request timeout")
        }
        if flags.subscribed.load(ordering: .relaxed) || flags.pending.load(ordering: .relaxed) > 0 {
            // A subscriber waits for notifications; an unanswered request is work under way, not idleness.
            lastRequest = now
        } else if now >= lastRequest + timeouts.idle {
            return close(context, "closing an idle connection")
        }
        var next = lastRequest + timeouts.idle
        if let partialSince { next = min(next, partialSince + timeouts.request) }
        schedule(context, at: next)
    }

    private func close(_ context: ChannelHandlerContext, _ message: Logger.Message) {
        logger.debug(message, metadata: ["bunq.peer_pid": "\(peer.pid)", "bunq.peer_uid": "\(peer.uid)"])
        drop()
        context.close(promise: nil)
    }

    private func overflow(_ context: ChannelHandlerContext) {
        overflowed = true
        partialSince = nil
        drop()
        context.fireChannelRead(wrapInboundOut(.oversize))
    }

    /// Forgets the unfinished line and its memory.
    private func drop() {
        partial = nil
        account(0)
    }

    private func account(_ bytes: Int) {
        guard bytes != held else { return }
        memory.changed(from: held, to: bytes)
        held = bytes
    }
}

/// The input buffers every connection holds, and what the allocator can be asked to give back: after many
/// connections held large partial lines and left, glibc keeps the freed memory in its arenas (it returns only the
/// top of a heap), so the server asks it to release free pages once enough has been freed since it last did.
final class ConnectionMemory: Sendable {
    /// Freed bytes (buffers, plus an estimate per closed connection) worth returning.
    static let releaseThreshold = 1_024 * 1_024
    /// How often the server looks (a few microseconds when there is nothing to return).
    static let releaseInterval = Duration.seconds(2)
    /// What one closed connection leaves behind besides its buffers (channel, pipeline, handlers, task).
    static let perConnection = 8 * 1_024

    private let held = Atomic<Int>(0)
    private let freed = Atomic<Int>(0)
    private let release: @Sendable () -> Void

    init(release: @escaping @Sendable () -> Void) {
        self.release = release
    }

    /// Bytes held in unfinished lines across all connections.
    var bytesHeld: Int { held.load(ordering: .relaxed) }

    func changed(from old: Int, to new: Int) {
        _ = held.wrappingAdd(new - old, ordering: .relaxed)
        if new < old { _ = freed.wrappingAdd(old - new, ordering: .relaxed) }
    }

    func connectionEnded() {
        _ = freed.wrappingAdd(Self.perConnection, ordering: .relaxed)
    }

    /// Returns free memory to the system when enough was freed since the last time (called off the event loops:
    /// it walks the heap). Returns whether it did.
    @discardableResult
    func releaseIfWorthwhile() -> Bool {
        guard freed.load(ordering: .relaxed) >= Self.releaseThreshold else { return false }
        freed.store(0, ordering: .relaxed)
        release()
        return true
    }

    /// Every `releaseInterval` until cancelled.
    func run() async {
        while (try? await Task.sleep(for: Self.releaseInterval)) != nil {
            releaseIfWorthwhile()
        }
    }
}
