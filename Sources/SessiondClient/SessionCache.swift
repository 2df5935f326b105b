import Foundation
import SessionProtocol
import Synchronization

/// Session tokens from memory: zero round trips for the common case.
///
/// The first `session(_:)` subscribes once (a connection of its own, read by a thread of its own) and asks the
/// daemon. A cached session is served until its `renew_at` (past it, while the renewal runs, a second at a
/// time), and never later than `margin` seconds before its `expires_at`; both are measured from when it was
/// fetched on the monotonic clock, so a wall clock that steps cannot stretch them. A rotation or state change of
/// the context, or a lost subscription, drops what is cached, and the next call asks the daemon again. Only
/// contexts the live subscription covers are cached.
///
/// Safe to share between threads: one call at a time goes over its connection.
public final class SessionCache: Sendable {
    public let path: String
    /// Seconds before a session's expiry from which it is never served from memory.
    public let margin: TimeInterval

    struct Entry {
        let session: [String: String]
        let until: ContinuousClock.Instant
    }

    struct State: ~Copyable {
        var entries: [String: Entry] = [:]
        /// The contexts the live subscription covers; empty until it is confirmed and after it is lost.
        var watched: Set<String> = []
        var watching = false
        var hits = 0
        var misses = 0
        /// Ends the live subscription's connection (cleared before that connection is released).
        var watcher: SessiondConnection.ShutdownHandle?
    }

    private let state = Mutex(State())
    /// The connection calls go over (made on first use, again after it broke).
    private let connection = Mutex<SessiondConnection?>(nil)
    private let confirmed = Atomic<Bool>(false)

    public init(path: String = SessiondConnection.defaultPath, margin: TimeInterval = 60) {
        self.path = path
        self.margin = margin
    }

    /// Ends the subscription (its thread then ends) and the call connection; nothing stays cached.
    public func close() {
        state.withLock { $0.watcher?.shutdown() }
        connection.withLock { $0 = nil }
    }

    /// Served from memory, asked of the daemon.
    public var counts: (hits: Int, misses: Int) { state.withLock { ($0.hits, $0.misses) } }

    /// The context's `session.get` result (its string fields: token, expires_at, renew_at, …).
    public func session(_ context: String) throws -> [String: String] {
        let fetched = ContinuousClock.now
        if let cached = state.withLock({ state -> [String: String]? in
            guard let entry = state.entries[context], fetched < entry.until else {
                state.misses += 1
                return nil
            }
            state.hits += 1
            return entry.session
        }) {
            return cached
        }
        watch()
        // Cached only when the subscription covering it was live before the answer was asked for.
        let covered = state.withLock { $0.watched.contains(context) }
        let session = try sessionGet(context)
        if covered, let until = deadline(session, fetched: fetched) {
            state.withLock { state in
                if state.watched.contains(context) { state.entries[context] = Entry(session: session, until: until) }
            }
        }
        return session
    }

    /// The context's current session token.
    public func token(_ context: String) throws -> String {
        guard let token = try session(context)["token"] else { throw SessiondClientError.protocolError("no token in the answer") }
        return token
    }

    /// Until when `session` may be served: its renew_at (a second at a time once that passed), at most its
    /// expiry minus the margin; nil when not at all.
    func deadline(_ session: [String: String], fetched: ContinuousClock.Instant) -> ContinuousClock.Instant? {
        guard let expires = session["expires_at"].flatMap(Self.date) else { return nil }
        let now = Date()
        var until = expires.addingTimeInterval(-margin)
        if let renew = session["renew_at"].flatMap(Self.date) {
            until = min(until, renew > now ? renew : now.addingTimeInterval(1))
        }
        let remaining = until.timeIntervalSince(now)
        return remaining > 0 ? fetched + .milliseconds(Int64(remaining * 1_000)) : nil
    }

    /// The protocol's timestamps (RFC 3339 UTC with milliseconds) as dates.
    public static func date(_ text: String) -> Date? {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter.date(from: text)
    }

    /// `session.get` over the call connection (made on first use; made again once when the daemon had closed
    /// it): the result's string and number fields as text.
    private func sessionGet(_ context: String) throws -> [String: String] {
        try connection.withLock { connection in
            for attempt in 0..<2 {
                if connection == nil { connection = try SessiondConnection(path: path) }
                do {
                    return try connection!.call("session.get", ["context": .string(context)]).compactMapValues { value -> String? in
                        switch value {
                        case .string(let text): text
                        case .integer, .double: value.json
                        case .null, .bool, .array, .object: nil
                        }
                    }
                } catch SessiondClientError.protocolError where attempt == 0 {
                    // Closed by the daemon (its idle timeout, a restart): once more on a new connection.
                    connection = nil
                }
            }
            throw SessiondClientError.protocolError("the daemon closed the connection twice")
        }
    }

    /// Starts the subscription once (again after it was lost) and waits until it is confirmed.
    private func watch() {
        let start = state.withLock { state -> Bool in
            guard !state.watching else { return false }
            state.watching = true
            return true
        }
        if start {
            confirmed.store(false, ordering: .releasing)
            let thread = Thread { [self] in follow() }
            thread.name = "bunq-sessiond-cache"
            thread.start()
        }
        let deadline = ContinuousClock.now + .seconds(5)
        while !confirmed.load(ordering: .acquiring), ContinuousClock.now < deadline { usleep(1_000) }
    }

    private func follow() {
        guard let watcher = try? SessiondConnection(path: path),
              let subscribed = try? watcher.call("session.subscribe", as: RPCResult.Subscribed.self).subscribed else { return finish() }
        withExtendedLifetime(watcher) {
            let handle = watcher.shutdownHandle
            let covered = Set(subscribed)
            state.withLock { state in
                state.watched = covered
                state.watcher = handle
            }
            confirmed.store(true, ordering: .releasing)
            while let notification = try? watcher.nextNotification() {
                guard let context = notification.params["context"]?.string else { continue }
                _ = state.withLock { $0.entries.removeValue(forKey: context) }
            }
            // Before the connection is released: its handle must not outlive its descriptor.
            finish()
        }
    }

    /// The subscription is gone: without notifications nothing cached can be trusted to be current.
    private func finish() {
        state.withLock { state in
            state.watched = []
            state.entries = [:]
            state.watching = false
            state.watcher = nil
        }
        confirmed.store(true, ordering: .releasing)
    }
}
