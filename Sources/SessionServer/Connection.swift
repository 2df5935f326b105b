import Logging
import NIOCore
import SessionKeeper
import UnixListener
import SessionProtocol
import Synchronization

/// One client connection's task (the swift-nio structured model: `NIOAsyncChannel`, one task per connection).
/// It owns everything the connection started: the requests the fast path passed up (at most `maxPending` at
/// once; beyond that, reading waits), and its subscription. When the client half-closes, every request already
/// read is still answered; then the connection ends.
struct Connection {
    /// Unanswered requests allowed per connection; beyond it, the connection is not read until answers go out.
    static let maxPending = 64
    let channel: NIOAsyncChannel<SlowRequest, ByteBuffer>
    let peer: PeerCredentials
    let flags: ConnectionFlags
    let service: SocketService

    func run() async {
        try? await channel.executeThenClose { inbound, outbound in
            let subscription = Subscription(events: service.keeper.events, peer: peer, service: service,
                                            flags: flags)
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
                        }
                        try? await outbound.write(ByteBuffer(bytes: answer))
                        _ = flags.pending.wrappingSubtract(1, ordering: .relaxed)
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

/// A connection's `session.subscribe`: the contexts it wants, fed from the keeper's broadcaster into a coalescing
/// queue (the newest notification per context and kind) that the connection's task writes out. Access is decided at delivery: every notification is checked
/// against the current rules, and a reload that revokes a context ends that part of the subscription with a
/// `forbidden` notification (the one a removal sends); the other contexts go on.
final class Subscription: Sendable {
    private let events: EventBroadcaster
    private let peer: PeerCredentials
    private let access: AccessControl
    private let registry: SubscriptionRegistry
    /// The published sessions (and their clock), to say whether a failed context's token is still good.
    private let sessions: SessionTable
    /// A subscription with no context is none: such a connection is closed when idle like any other.
    private let flags: ConnectionFlags
    private let state = Mutex<(id: Int?, wanted: Set<String>, ended: Bool)>((nil, [], false))
    private let queue = NotificationQueue()

    init(events: EventBroadcaster, peer: PeerCredentials, service: SocketService, flags: ConnectionFlags) {
        self.events = events
        self.flags = flags
        self.peer = peer
        access = service.access
        registry = service.subscriptions
        sessions = service.keeper.sessions
    }

    /// Replaces what the connection subscribes to.
    func set(_ contexts: [String]) {
        let register = state.withLock { state -> Bool in
            state.wanted = Set(contexts)
            return state.id == nil && !state.ended
        }
        flags.subscribed.store(!contexts.isEmpty, ordering: .relaxed)
        guard register else { return }
        let id = events.subscribe { [weak self] event, entry in self?.offer(event, entry) }
        let late = state.withLock { state -> Bool in
            if state.ended { return true }
            state.id = id
            return false
        }
        if late {
            events.cancel(id)
        } else {
            registry.add(id, self)
        }
    }

    private func offer(_ event: SchedulerEvent, _ entry: SessionEntry?) {
        guard let (context, line) = SocketService.notification(event, entry, now: sessions.now),
              state.withLock({ $0.wanted.contains(context) }) else { return }
        guard access.mayUse(peer, context) else {
            revoke([context])
            return
        }
        switch event {
        case .rotated: queue.put(line, context: context, kind: .rotated)
        case .failed: queue.put(line, context: context, kind: .state)
        case .removed:
            forget(context)
            queue.put(line, context: context, kind: .state, final: true)
        }
    }

    /// Re-decides every context against the current rules (after a reload): the ones no longer allowed are
    /// ended with `forbidden`.
    func revalidate() {
        let wanted = state.withLock { $0.wanted }
        revoke(wanted.filter { !access.mayUse(peer, $0) })
    }

    private func revoke(_ contexts: some Collection<String>) {
        for context in contexts.sorted() where forget(context) {
            queue.put(SocketService.forbidden(context), context: context, kind: .state, final: true)
        }
    }

    /// Stops watching `context`; returns whether it was watched.
    @discardableResult
    private func forget(_ context: String) -> Bool {
        let (removed, empty) = state.withLock { state in (state.wanted.remove(context) != nil, state.wanted.isEmpty) }
        if removed, empty { flags.subscribed.store(false, ordering: .relaxed) }
        return removed
    }

    /// Writes notifications until the subscription ends.
    func deliver(to outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>) async {
        while let line = await queue.next() {
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
        if let id {
            events.cancel(id)
            registry.remove(id)
        }
        queue.finish()
    }
}

/// Every live subscription, so a reload can re-decide their access at once.
final class SubscriptionRegistry: Sendable {
    private let live = Mutex<[Int: Subscription]>([:])

    func add(_ id: Int, _ subscription: Subscription) { live.withLock { $0[id] = subscription } }
    func remove(_ id: Int) { _ = live.withLock { $0.removeValue(forKey: id) } }

    /// Re-decides every subscription against the current access rules.
    func revalidate() {
        for subscription in live.withLock({ Array($0.values) }) { subscription.revalidate() }
    }
}
