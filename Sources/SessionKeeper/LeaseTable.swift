import Foundation
import Synchronization

/// What the socket server may know about a context without asking the scheduler: its current session and
/// until when it may be handed out. Updated by the keeper on every change, read on the socket's hot path.
public struct LeaseEntry: Sendable, Equatable {
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
    public let usableUntil: ContinuousClock.Instant?

    public init(context: String, kind: StoredContext.Kind, session: SessionInfo?, renewAt: Date?, generation: Int,
                serverPublicKeyPEM: String?, usableUntil: ContinuousClock.Instant?) {
        self.context = context
        self.kind = kind
        self.session = session
        self.renewAt = renewAt
        self.generation = generation
        self.serverPublicKeyPEM = serverPublicKeyPEM
        self.usableUntil = usableUntil
    }

    /// The session when it may be handed out now.
    public func grantable(at now: ContinuousClock.Instant = .now) -> SessionInfo? {
        guard let session, let usableUntil, now < usableUntil else { return nil }
        return session
    }
}

/// Every context's `LeaseEntry`, behind one lock: a `session.get` costs a dictionary lookup.
public final class LeaseTable: Sendable {
    private let entries = Mutex<[String: LeaseEntry]>([:])

    public init() {}

    public func set(_ entry: LeaseEntry) { entries.withLock { $0[entry.context] = entry } }
    public func remove(_ context: String) { _ = entries.withLock { $0.removeValue(forKey: context) } }
    public func entry(_ context: String) -> LeaseEntry? { entries.withLock { $0[context] } }
    public var names: [String] { entries.withLock { $0.keys.sorted() } }
    public var count: Int { entries.withLock { $0.count } }
}

/// Fans scheduler events out to subscribers (socket connections), each with its own callback.
public final class EventBroadcaster: Sendable {
    public typealias Subscriber = @Sendable (SchedulerEvent, LeaseEntry?) -> Void
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

    func publish(_ event: SchedulerEvent, _ entry: LeaseEntry?) {
        for subscriber in state.withLock({ Array($0.subscribers.values) }) { subscriber(event, entry) }
    }
}
