import Foundation

/// Makes a new session for a context: bootstraps it first when it is not registered yet. The scheduler calls it
/// at most once at a time per context.
public protocol SessionRenewer: Sendable {
    func renew(_ context: String) async -> Result<SessionInfo, RenewalError>
}

/// Something the scheduler did that others may want to hear about (logs, socket subscriptions).
public enum SchedulerEvent: Sendable, Equatable {
    /// A new session is live for the context.
    case rotated(context: String, generation: Int, expiresAt: Date)
    /// A renewal failed. `enteredNeedsAttention` is true only on the failure that put the context in
    /// `needs_attention` (log that once, at error level).
    case failed(context: String, error: RenewalError, consecutiveFailures: Int, nextRetryAt: Date?,
                enteredNeedsAttention: Bool)
}

/// The renewal loop: one task sleeping until the earliest deadline of all contexts (or until woken), starting
/// due renewals in earliest-deadline-first order, each after taking its rate-limit slot in that same order, with
/// at most `maxConcurrent` in flight.
public actor SessionScheduler {
    private var planner: RenewalPlanner<SystemRandomNumberGenerator>
    private let renewer: any SessionRenewer
    private let maxConcurrent: Int
    /// Reserves the rate-limit slot for one renewal and returns when it may start.
    private let admission: @Sendable () async -> ContinuousClock.Instant
    private let now: @Sendable () -> Date
    private let wake = WakeSignal()
    private var waiters: [String: [CheckedContinuation<Result<SessionInfo, RenewalError>, Never>]] = [:]
    private let eventContinuation: AsyncStream<SchedulerEvent>.Continuation
    /// Every event, in order. One consumer.
    public nonisolated let events: AsyncStream<SchedulerEvent>
    /// Loop iterations so far: proof of progress for the watchdog.
    public private(set) var ticks: UInt64 = 0
    /// The longest the loop sleeps without a deadline, so a healthy loop ticks at least this often.
    private var maxSleep: TimeInterval = 10

    /// A new renewal policy (a configuration reload): applies to every renewal scheduled from now on.
    public func setPolicy(_ policy: RenewalPolicy) {
        planner.policy = policy
    }

    /// Makes the loop wake at least every `interval` (for a watchdog pinging at about twice that period).
    public func setMaxSleep(_ interval: TimeInterval) {
        maxSleep = max(0.05, interval)
        wake.signal()
    }

    public init(policy: RenewalPolicy, renewer: any SessionRenewer, maxConcurrent: Int = 8,
                admission: @escaping @Sendable () async -> ContinuousClock.Instant = { .now },
                now: @escaping @Sendable () -> Date = Date.init) {
        planner = RenewalPlanner(policy: policy, random: SystemRandomNumberGenerator())
        self.renewer = renewer
        self.maxConcurrent = max(1, maxConcurrent)
        self.admission = admission
        self.now = now
        (events, eventContinuation) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(10_000))
    }

    // MARK: The loop

    /// Runs until the calling task is cancelled; renewals in flight are cancelled with it.
    public func run() async {
        await withDiscardingTaskGroup { group in
            while !Task.isCancelled {
                ticks &+= 1
                for name in planner.takeDue(now: now(), limit: maxConcurrent - planner.inFlightCount) {
                    let slot = await admission()
                    group.addTask { [renewer] in
                        try? await Task.sleep(until: slot, clock: .continuous)
                        let result = await renewer.renew(name)
                        await self.complete(name, result)
                    }
                }
                let deadline = planner.inFlightCount >= maxConcurrent ? nil : planner.nextDeadline()
                await sleep(until: deadline)
            }
            eventContinuation.finish()
        }
    }

    private func sleep(until deadline: Date?) async {
        let seconds = min(maxSleep, max(0, deadline?.timeIntervalSince(now()) ?? maxSleep))
        await withTaskGroup(of: Void.self) { group in
            group.addTask { try? await Task.sleep(for: .seconds(seconds)) }
            group.addTask { [wake] in await wake.wait() }
            await group.next()
            group.cancelAll()
        }
    }

    private func complete(_ name: String, _ result: Result<SessionInfo, RenewalError>) {
        let at = now()
        switch result {
        case .success(let session):
            let generation = planner.succeeded(name, session: session, now: at)
            eventContinuation.yield(.rotated(context: name, generation: generation, expiresAt: session.expiresAt))
        case .failure(let error):
            let entered = planner.failed(name, error: error, now: at)
            let schedule = planner.schedule(name, now: at)
            eventContinuation.yield(.failed(context: name, error: error,
                                            consecutiveFailures: schedule?.consecutiveFailures ?? 0,
                                            nextRetryAt: schedule?.nextRetryAt, enteredNeedsAttention: entered))
        }
        for waiter in waiters.removeValue(forKey: name) ?? [] { waiter.resume(returning: result) }
        wake.signal()
    }

    // MARK: The core's API

    /// Adds a context with its restored session (nil: bootstrap it now).
    public func add(_ name: String, session: SessionInfo?, generation: Int = 0) {
        planner.add(name, session: session, generation: generation, now: now())
        wake.signal()
    }

    /// Adds many contexts at once (start-up); returns their schedules.
    public func addMany(_ contexts: [(name: String, session: SessionInfo?, generation: Int)]) -> [String: ContextSchedule] {
        let at = now()
        var schedules: [String: ContextSchedule] = [:]
        schedules.reserveCapacity(contexts.count)
        for context in contexts {
            planner.add(context.name, session: context.session, generation: context.generation, now: at)
            schedules[context.name] = planner.schedule(context.name, now: at)
        }
        wake.signal()
        return schedules
    }

    public func remove(_ name: String) {
        planner.remove(name)
        for waiter in waiters.removeValue(forKey: name) ?? [] {
            waiter.resume(returning: .failure(RenewalError(.needsAttention, "the context was removed")))
        }
    }

    public var contextNames: [String] { planner.contextNames.sorted() }

    /// The token rule: a token valid beyond the safety margin, or the state and when to retry.
    public func lease(_ name: String) -> LeaseResult? {
        planner.lease(name, now: now())
    }

    public func schedule(_ name: String) -> ContextSchedule? {
        planner.schedule(name, now: now())
    }

    /// The context due next and when.
    public func nextDue() -> (name: String, at: Date)? {
        planner.nextDue()
    }

    /// The earliest upcoming renewal or retry.
    public func nextDeadline() -> Date? {
        planner.nextDeadline()
    }

    /// Renews now (also out of `needs_attention`) and returns once the new session is live or the attempt failed.
    public func renewNow(_ name: String) async -> Result<SessionInfo, RenewalError>? {
        guard planner.schedule(name, now: now()) != nil else { return nil }
        planner.requestRenewal(name, now: now())
        wake.signal()
        return await withCheckedContinuation { waiters[name, default: []].append($0) }
    }

    /// Asks for a renewal without waiting (a configuration reload retries `needs_attention` contexts this way).
    public func requestRenewal(_ name: String) {
        planner.requestRenewal(name, now: now())
        wake.signal()
    }

    /// bunq said the context's token is no longer valid: one immediate renewal.
    public func sessionInvalid(_ name: String) {
        planner.sessionInvalid(name, now: now())
        wake.signal()
    }
}
