import Logging
import NIOCore
import SessionKeeper
import SessionProtocol
import Synchronization

/// One client connection's task (the swift-nio structured model: `NIOAsyncChannel`, one task per connection).
/// It owns everything the connection started: the requests the fast path passed up (at most `maxPending` at
/// once; beyond that, reading waits), and its subscription. When the client half-closes, every request already
/// read is still answered; then the connection ends.
struct Connection {
    /// Unanswered requests allowed per connection; beyond it, the connection is not read until answers go out.
    static let maxPending = 64
    /// Notifications a subscriber that does not read may have waiting; older ones are dropped beyond it (the
    /// newest `session.rotated` carries the current token, so nothing is lost that a later one does not replace).
    static let maxQueuedNotifications = 256

    let channel: NIOAsyncChannel<SlowRequest, ByteBuffer>
    let peer: PeerCredentials
    let flags: ConnectionFlags
    let service: SocketService

    func run() async {
        try? await channel.executeThenClose { inbound, outbound in
            let subscription = Subscription(events: service.keeper.events)
            await withDiscardingTaskGroup { group in
                group.addTask { await subscription.deliver(to: outbound) }
                await serve(inbound, outbound, subscription)
                subscription.end()
            }
        }
    }

    /// Answers every request read until the client stops sending (or the connection is cancelled).
    private func serve(_ inbound: NIOAsyncChannelInboundStream<SlowRequest>,
                       _ outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>, _ subscription: Subscription) async {
        await withTaskGroup(of: Void.self) { group in
            var running = 0
            do {
                for try await slow in inbound {
                    if running >= Self.maxPending {
                        await group.next()
                        running -= 1
                    }
                    running += 1
                    group.addTask { [service, peer, flags] in
                        let answer = await service.handle(slow.request, id: slow.id, peer: peer) { contexts in
                            subscription.set(contexts)
                            flags.subscribed.store(true, ordering: .relaxed)
                        }
                        try? await outbound.write(ByteBuffer(bytes: answer))
                    }
                }
            } catch {
                // The connection failed or was cancelled: the answers under way still finish (each honours
                // cancellation) before the task ends.
            }
            await group.waitForAll()
        }
    }
}

/// A connection's `session.subscribe`: the contexts it wants, fed from the keeper's broadcaster into a bounded
/// queue that the connection's task writes out.
final class Subscription: Sendable {
    private let events: EventBroadcaster
    private let state = Mutex<(id: Int?, wanted: Set<String>, ended: Bool)>((nil, [], false))
    private let stream: AsyncStream<[UInt8]>
    private let continuation: AsyncStream<[UInt8]>.Continuation

    init(events: EventBroadcaster) {
        self.events = events
        (stream, continuation) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(Connection.maxQueuedNotifications))
    }

    /// Replaces what the connection subscribes to.
    func set(_ contexts: [String]) {
        let register = state.withLock { state -> Bool in
            state.wanted = Set(contexts)
            return state.id == nil && !state.ended
        }
        guard register else { return }
        let id = events.subscribe { [weak self] event, entry in self?.offer(event, entry) }
        let late = state.withLock { state -> Bool in
            if state.ended { return true }
            state.id = id
            return false
        }
        if late { events.cancel(id) }
    }

    private func offer(_ event: SchedulerEvent, _ entry: LeaseEntry?) {
        guard let (context, line) = SocketService.notification(event, entry),
              state.withLock({ $0.wanted.contains(context) }) else { return }
        continuation.yield(line)
    }

    /// Writes notifications until the subscription ends.
    func deliver(to outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>) async {
        for await line in stream {
            do { try await outbound.write(ByteBuffer(bytes: line)) } catch { break }
        }
    }

    /// The connection is ending: no more notifications.
    func end() {
        let id = state.withLock { state -> Int? in
            state.ended = true
            defer { state.id = nil }
            return state.id
        }
        if let id { events.cancel(id) }
        continuation.finish()
    }
}
