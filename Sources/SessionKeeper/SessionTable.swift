import Foundation
import Synchronization
import Timekeeping

/// What the socket server may know about a context without asking the scheduler: its current session and
/// until when it may be handed out. Updated by the keeper on every change, read on the socket's hot path.
public struct SessionEntry: Sendable, Equatable {
    public let context: String
    public let kind: StoredContext.Kind
    /// The current session, if any. Its token is secret.
    public let session: SessionInfo?
    public let renewAt: Date?
    public let generation: Int
    /// The PEM of bunq's key for this identity's installation (to verify bunq's replies).
    public let serverPublicKeyPEM: String?
    /// On the monotonic clock: the last moment the session may be handed out (its expiry minus the token rule's
    /// margin); nil when it may not be at all. A wall clock that steps cannot move it.
    public let usableUntil: AnyClock.Instant?
    /// The context's state when this snapshot was published (a renewal's start publishes nothing: `live` covers
    /// `renewing`; `grantable` decides about the token).
    public let state: ContextState

    public init(context: String, kind: StoredContext.Kind, session: SessionInfo?, renewAt: Date?, generation: Int,
                serverPublicKeyPEM: String?, usableUntil: AnyClock.Instant?, state: ContextState = .live) {
        self.context = context
        self.kind = kind
        self.session = session
        self.renewAt = renewAt
        self.generation = generation
        self.serverPublicKeyPEM = serverPublicKeyPEM
        self.usableUntil = usableUntil
        self.state = state
    }

    /// The session when it may be handed out at `now` (on the table's clock: `SessionTable.now`).
    public func grantable(at now: AnyClock.Instant) -> SessionInfo? {
        guard let session, let usableUntil, now < usableUntil else { return nil }
        return session
    }
}

/// Every context's published `SessionEntry`, behind one lock: a `session.get` costs a dictionary lookup, and the
/// count of contexts per state (for `daemon.status` and the STATUS line) is kept as entries come and go, so
/// reading it costs nothing per context. Written only by the context registry.
public final class SessionTable: Sendable {
    private struct Contents {
        var entries: [String: SessionEntry] = [:]
        var counts: [ContextState: Int] = [:]

        mutating func uncount(_ entry: SessionEntry?) {
            guard let entry else { return }
            counts[entry.state, default: 0] -= 1
        }
    }

    private let contents = Mutex(Contents())
    /// The monotonic clock the entries' `usableUntil` is on.
    public let clock: AnyClock

    public init(clock: AnyClock) {
        self.clock = clock
    }

    /// Now on the entries' clock, to ask an entry whether its session is `grantable(at:)`.
    public var now: AnyClock.Instant { clock.now }

    public func set(_ entry: SessionEntry) {
        contents.withLock { contents in
            contents.uncount(contents.entries.updateValue(entry, forKey: entry.context))
            contents.counts[entry.state, default: 0] += 1
        }
    }

    public func remove(_ context: String) {
        contents.withLock { contents in contents.uncount(contents.entries.removeValue(forKey: context)) }
    }

    public func entry(_ context: String) -> SessionEntry? { contents.withLock { $0.entries[context] } }
    public var names: [String] { contents.withLock { $0.entries.keys.sorted() } }
    public var count: Int { contents.withLock { $0.entries.count } }
    /// How many of the contexts `visible` admits are in each state (one pass over the table: for callers who may
    /// see only some).
    public func stateCounts(where visible: (String) -> Bool) -> [ContextState: Int] {
        let states = contents.withLock { $0.entries.values.map { ($0.context, $0.state) } }
        var counts: [ContextState: Int] = [:]
        for (name, state) in states where visible(name) { counts[state, default: 0] += 1 }
        return counts
    }

    /// How many contexts are in each state, as last published; states with none are absent.
    public var stateCounts: [ContextState: Int] { contents.withLock { $0.counts.filter { $0.value > 0 } } }
}

/// Fans scheduler events out to subscribers (socket connections), each with its own callback.
public final class EventBroadcaster: Sendable {
    public typealias Subscriber = @Sendable (SchedulerEvent, SessionEntry?) -> Void
    private let state = Mutex<(next: Int, subscribers: [Int: Subscriber])>((0, [:]))

    public init() {}

    /// Registers `subscriber`; returns the id to cancel it with.
    public func subscribe(_ subscriber: @escaping Subscriber) -> Int {
        state.withLock { state in
            state.next += 1
            state.subscribers[state.next] = subscriber
            return state.next
        }
    }

    public func cancel(_ id: Int) { _ = state.withLock { $0.subscribers.removeValue(forKey: id) } }

    func publish(_ event: SchedulerEvent, _ entry: SessionEntry?) {
        for subscriber in state.withLock({ Array($0.subscribers.values) }) { subscriber(event, entry) }
    }
}
