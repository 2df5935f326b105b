import Foundation
import Logging
import Metrics
import Synchronization
import Timekeeping

/// Reads and writes fail apart: a database locked by another writer still answers reads.
enum CallKind: Sendable, Hashable {
    case read
    case write

    /// Calls named `read_…` read; every other call writes.
    init(operation: String) { self = operation.hasPrefix("read_") ? .read : .write }
}

/// How the state store is doing, as `daemon.status`, the STATUS line and the logs tell it.
public struct StoreHealth: Sendable, Equatable {
    /// False from the first call that failed for the store's sake (no answer within the deadline, a broken
    /// connection) until the next call it answers.
    public var reachable = true
    /// When the current failure began; nil while reachable.
    public var failingSince: Date?
    /// What the last failed call said (never a secret: store errors carry no values).
    public var lastError: String?
    /// Calls that failed in a row.
    public var consecutiveFailures = 0
    /// Which kinds of call are failing: reads, writes or both (an SQLite database locked by another writer still
    /// answers reads). Reachable again once every kind that failed has answered.
    var failing: Set<CallKind> = []

    public init() {}
}

/// Every call to the state store goes through `run`: it has a deadline (`state.timeout`), is counted and timed by
/// operation and result, and moves the store's health. A store that does not answer within the deadline costs
/// the caller that wait and `store_timeout`, never more: `run` returns at the deadline whether or not the engine
/// has let go of the call (the engine's own cancellation then ends it: GRDB interrupts SQLite, and PostgreSQL's
/// connection is closed through `onTimeout`).
///
/// One line at error priority when the store becomes unreachable and one when it answers again, however many
/// calls fail in between.
public final class StoreCalls: Sendable {
    public let timeout: Duration
    /// Where the store is, for messages (no password).
    public let location: String
    private let clock: AnyClock
    private let state = Mutex(StoreHealth())
    private let logger: Logger

    public init(location: String, timeout: Duration, clock: AnyClock = .continuous, logger: Logger) {
        self.location = location
        self.timeout = timeout
        self.clock = clock
        self.logger = logger
    }

    public var health: StoreHealth { state.withLock { $0 } }

    /// What a call ended as.
    private enum Outcome<T: Sendable>: Sendable {
        case value(T)
        case deadline
    }

    /// Runs `body` within the deadline. `operation` is a fixed name (a metric label: no context names or ids).
    /// `timeout` replaces the store's deadline for a call that is known to be long (migrations at start, an import).
    public func run<T: Sendable>(_ operation: String, timeout: Duration? = nil, _ body: @escaping @Sendable () async throws -> T,
                                 onTimeout: @escaping @Sendable () -> Void = {}) async throws -> T {
        let started = clock.now
        do {
            let value = try await Self.race(clock, timeout ?? self.timeout, location, body, onTimeout)
            finished(operation, started, result: "ok", error: nil)
            return value
        } catch let error as StoreError {
            let result: String
            switch error.code {
            case .timeout: result = "timeout"
            case .database: result = "error"
            default: result = "refused"  // the store answered: no such row, a lease moved on, …
            }
            finished(operation, started, result: result, error: error)
            throw error
        } catch is CancellationError {
            finished(operation, started, result: "cancelled", error: nil)
            throw CancellationError()
        } catch {
            let wrapped = StoreError(.database, "cannot \(operation.replacingOccurrences(of: "_", with: " ")) in \(location)",
                                     cause: error)
            finished(operation, started, result: "error", error: wrapped)
            throw wrapped
        }
    }

    private static func race<T: Sendable>(
        _ clock: AnyClock, _ timeout: Duration, _ location: String, _ body: @escaping @Sendable () async throws -> T,
        _ onTimeout: @escaping @Sendable () -> Void
    ) async throws -> T {
        let outcome = try await withThrowingTaskGroup(of: Outcome<T>.self) { group in
            group.addTask { .value(try await body()) }
            group.addTask {
                try await clock.sleep(for: timeout)
                return .deadline
            }
            // The first to finish decides; the other is cancelled (a call past its deadline is also told to stop,
            // which the engines honour promptly).
            let first = try await group.next() ?? .deadline
            if case .deadline = first { onTimeout() }
            group.cancelAll()
            return first
        }
        switch outcome {
        case .value(let value): return value
        case .deadline: throw StoreError(.timeout, "the state store \(location) did not answer within \(timeout)")
        }
    }

    private func finished(_ operation: String, _ started: AnyClock.Instant, result: String, error: StoreError?) {
        Counter(label: "bunq_sessiond_store_operations_total", dimensions: [("operation", operation), ("result", result)])
            .increment()
        Timer(label: "bunq_sessiond_store_operation_duration_seconds", dimensions: [("operation", operation)])
            .recordNanoseconds(Int64((clock.now - started) / .nanoseconds(1)))
        // Whether the store itself failed: an answer that refuses (missing, fenced, locked) is the store working.
        let failed = error.map { $0.code == .timeout || $0.code == .database } ?? false
        if result == "cancelled" { return }
        let kind = CallKind(operation: operation)
        let transition: (down: StoreHealth?, upAfter: Date?) = state.withLock { health in
            if failed {
                health.consecutiveFailures += 1
                health.lastError = error?.description
                health.failing.insert(kind)
                guard health.reachable else { return (nil, nil) }
                health.reachable = false
                health.failingSince = Date()
                return (health, nil)
            }
            health.failing.remove(kind)
            guard !health.reachable, health.failing.isEmpty else { return (nil, nil) }
            let since = health.failingSince
            health = StoreHealth()
            return (nil, since)
        }
        if let down = transition.down {
            logger.error("state store unreachable: serving the sessions held, renewing nothing that could not be saved",
                         metadata: ["bunq.store": "\(location)", "bunq.operation": "\(operation)",
                                    "bunq.error": "\(down.lastError ?? "-")"])
        } else if let since = transition.upAfter {
            logger.notice("state store reachable again", metadata: [
                "bunq.store": "\(location)", "bunq.unreachable_seconds": "\(Int(Date().timeIntervalSince(since).rounded()))",
            ])
        }
    }
}
