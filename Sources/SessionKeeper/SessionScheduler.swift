import Foundation
import Synchronization

/// Makes new sessions for a context, in the two steps the session-server budget needs. The scheduler calls at
/// most one of them at a time per context.
public protocol SessionRenewer: Sendable {
    /// Bootstraps what is missing up to the session-server call (key, installation, PSD2 credential, device).
    /// Never calls session-server: it holds no slot of that budget.
    func prepare(_ context: String) async -> Result<Void, RenewalError>
    /// The session-server call, made at once: the scheduler has just granted this context the budget's slot.
    func openSession(_ context: String) async -> Result<SessionInfo, RenewalError>
}

/// Something the scheduler did that others may want to hear about (logs, socket subscriptions).
public enum SchedulerEvent: Sendable, Equatable {
    /// A new session is live for the context.
    case rotated(context: String, generation: Int, expiresAt: Date)
    /// A renewal failed. `enteredNeedsAttention` is true only on the failure that put the context in
    /// `needs_attention` (log that once, at error level).
    case failed(context: String, error: RenewalError, consecutiveFailures: Int, nextRetryAt: Date?,
                enteredNeedsAttention: Bool)
    /// The context is gone (removed by an admin, a reload or start-up). Published by the keeper, not the loop.
    case removed(context: String)
}

/// The renewal loop: one task sleeping until the earliest deadline of all contexts (or until woken), moving due
/// renewals on in earliest-deadline-first order, bootstrapping at most `maxConcurrent` new identities at once, and
/// granting the session-server budget one call at a time to the most urgent queued context.
///
/// Time comes from an injected `Clock` (monotonic: a stepping wall clock moves no deadline), so the budget logic
/// runs in virtual time in tests. Dates in and out are the wall clock's (`wallClock`), converted at the boundary.
public actor SessionScheduler<C: Clock> where C.Duration == Duration {
    private var planner: RenewalPlanner<SystemRandomNumberGenerator>
    private let maxConcurrent: Int
    private let clock: C
    private let wallClock: @Sendable () -> Date
    /// The planner's timeline: `originDate` at `origin`, then the monotonic clock's elapsed time.
    private let origin: C.Instant
    private let originDate: Date
    private let wake = WakeSignal()
    /// Callers waiting for a context's next renewal outcome. Outside the actor so a cancelled caller can leave.
    private let waiters = RenewalWaiters()
    private let eventContinuation: AsyncStream<SchedulerEvent>.Continuation
    /// Every event, in order. One consumer.
    public nonisolated let events: AsyncStream<SchedulerEvent>
    /// Loop iterations so far: proof of progress for the watchdog.
    public private(set) var ticks: UInt64 = 0
    /// The longest the loop sleeps without a deadline, so a healthy loop ticks at least this often.
    private var maxSleep: TimeInterval = 10
    /// Who the last budget forecast said would run late.
    private var lastLate: [String] = []

    public init(policy: RenewalPolicy, budget: SessionServerBudget = SessionServerBudget(),
                maxConcurrent: Int = 8, clock: C, wallClock: @escaping @Sendable () -> Date = Date.init) {
        planner = RenewalPlanner(policy: policy, budget: budget, random: SystemRandomNumberGenerator())
        self.maxConcurrent = max(1, maxConcurrent)
        self.clock = clock
        self.wallClock = wallClock
        origin = clock.now
        originDate = wallClock()
        (events, eventContinuation) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(10_000))
    }

    /// A new renewal policy (a configuration reload): applies to every renewal scheduled from now on.
    public func setPolicy(_ policy: RenewalPolicy) {
        planner.policy = policy
    }

    /// Makes the loop wake at least every `interval` (for a watchdog pinging at about twice that period).
    public func setMaxSleep(_ interval: TimeInterval) {
        maxSleep = max(0.05, interval)
        wake.signal()
    }

    // MARK: Clocks

    /// Now on the planner's (monotonic) timeline.
    private var now: Date { originDate.addingTimeInterval(origin.duration(to: clock.now).seconds) }
    /// Timeline minus wall clock: zero until the wall clock steps.
    private var skew: TimeInterval { now.timeIntervalSince(wallClock()) }
    private func inbound(_ date: Date) -> Date { date.addingTimeInterval(skew) }
    private func outbound(_ date: Date?) -> Date? { date?.addingTimeInterval(-skew) }

    // MARK: The loop

    /// Runs until the calling task is cancelled, making new sessions with `renewer`; renewals in flight are
    /// cancelled with it. The renewer is given here rather than at init: it writes through the context's owner,
    /// which is made after the scheduler (the owner schedules what it restores), so nothing is wired afterwards.
    public func run(renewing renewer: any SessionRenewer) async {
        await withDiscardingTaskGroup { group in
            // A tick, then a sleep until the next wake-up (or a wake signal); the sleep ends the loop on
            // cancellation, and nothing starts once cancelled.
            var running = !Task.isCancelled
            while running {
                ticks &+= 1
                let at = now
                planner.collectDue(now: at)
                for name in planner.startPreparations(limit: maxConcurrent) {
                    group.addTask { [renewer] in
                        let result = await renewer.prepare(name)
                        await self.prepared(name, result)
                    }
                }
                if let name = planner.grantSessionCall(now: at) {
                    // Started minus planned: the session-server queue's wait shows here.
                    if let planned = planner.plannedAt(name) { KeeperMetrics.renewalLag(at.timeIntervalSince(planned)) }
                    group.addTask { [renewer] in
                        let result = await renewer.openSession(name)
                        await self.complete(name, result)
                    }
                }
                running = await sleep(until: planner.nextWakeup())
            }
            eventContinuation.finish()
        }
        // Nobody is left to renew: whoever waits for an outcome gets one now.
        waiters.resumeAll(with: .failure(RenewalError(.retryable, "the daemon is shutting down", code: .shutdown)))
    }

    /// Sleeps until `deadline` (at most `maxSleep`) or a wake signal; false once the task is cancelled.
    private func sleep(until deadline: Date?) async -> Bool {
        let seconds = min(maxSleep, max(0, deadline?.timeIntervalSince(now) ?? maxSleep))
        guard seconds > 0 else { return !Task.isCancelled }
        let instant = clock.now.advanced(by: .seconds(seconds))
        await withTaskGroup(of: Void.self) { group in
            group.addTask { [clock] in try? await clock.sleep(until: instant, tolerance: nil) }
            group.addTask { [wake] in await wake.signalled() }
            await group.next()
            group.cancelAll()
        }
        return !Task.isCancelled
    }

    private func prepared(_ name: String, _ result: Result<Void, RenewalError>) {
        switch result {
        case .success: planner.prepared(name, now: now)
        case .failure(let error): fail(name, error)
        }
        wake.signal()
    }

    private func complete(_ name: String, _ result: Result<SessionInfo, RenewalError>) {
        switch result {
        case .success(let session):
            let generation = planner.succeeded(name, session: session.shifted(by: skew), now: now)
            eventContinuation.yield(.rotated(context: name, generation: generation, expiresAt: session.expiresAt))
            waiters.resume(name, with: result)
        case .failure(let error):
            fail(name, error)
        }
        wake.signal()
    }

    private func fail(_ name: String, _ error: RenewalError) {
        let at = now
        let entered = planner.failed(name, error: error, now: at)
        // Another daemon holds the context now: nothing failed; whoever waits hears of its next session.
        if error.code == .leaseLost { return }
        let schedule = planner.schedule(name, now: at)
        eventContinuation.yield(.failed(context: name, error: error,
                                        consecutiveFailures: schedule?.consecutiveFailures ?? 0,
                                        nextRetryAt: outbound(schedule?.nextRetryAt), enteredNeedsAttention: entered))
        waiters.resume(name, with: .failure(error))
    }

    // MARK: The core's API

    /// Adds a context with its restored session (nil: bootstrap it now).
    public func add(_ name: String, session: SessionInfo?, generation: Int = 0, held: Bool = true) {
        planner.add(name, session: session?.shifted(by: skew), generation: generation, held: held, now: now)
        wake.signal()
    }

    /// Adds a context that has no session yet and waits for its first attempt at one: the new session, or the
    /// failure (it keeps retrying in the background when the failure is retryable).
    public func addAwaitingFirstSession(_ name: String) async -> Result<SessionInfo, RenewalError> {
        planner.add(name, session: nil, now: now)
        wake.signal()
        return await waiters.wait(for: name)
    }

    /// Adds many contexts at once (start-up); returns their schedules.
    public func addMany(_ contexts: [(name: String, session: SessionInfo?, generation: Int)],
                        held: Bool = true) -> [String: ContextSchedule] {
        let at = now, skew = skew
        var schedules: [String: ContextSchedule] = [:]
        schedules.reserveCapacity(contexts.count)
        for context in contexts {
            planner.add(context.name, session: context.session?.shifted(by: skew), generation: context.generation,
                        held: held, now: at)
            schedules[context.name] = planner.schedule(context.name, now: at).map { $0.shifted(by: -skew) }
        }
        wake.signal()
        return schedules
    }

    public func remove(_ name: String) {
        planner.remove(name)
        waiters.resume(name, with: .failure(RenewalError(.needsAttention, "the context was removed", code: .removed)))
        wake.signal()
    }

    public var contextNames: [String] { planner.contextNames.sorted() }

    // MARK: A cluster's leases

    /// Whether this daemon renews the context (it holds the context's lease).
    public func setHeld(_ name: String, _ held: Bool) {
        planner.setHeld(name, held, now: now)
        wake.signal()
    }

    /// Every context's state now (a metrics scrape), in one call.
    public func states() -> [String: ContextState] { planner.states(now: now) }

    /// The contexts this daemon renews.
    public var heldNames: [String] { planner.heldNames }

    /// Whether a renewal of the context is under way here.
    public func isBusy(_ name: String) -> Bool { planner.isBusy(name) }
    /// Renewal calls under way: bootstrap steps being prepared, and the session-server call (at most one). A test
    /// on a manual clock knows the daemon is idle when each of these, and the loop, sleeps on the clock.
    public var runningRenewals: Int { planner.preparingCount + (planner.calling == nil ? 0 : 1) }

    /// A newer session another daemon committed: served from now on; true when it was newer.
    @discardableResult
    public func adopt(_ name: String, session: SessionInfo, generation: Int) -> Bool {
        let adopted = planner.adopt(name, session: session.shifted(by: skew), generation: generation, now: now)
        if adopted {
            waiters.resume(name, with: .success(session))
            wake.signal()
        }
        return adopted
    }

    /// The token rule: a token valid beyond the safety margin, or the state and when to retry.
    public func tokenGrant(_ name: String) -> TokenGrant? {
        switch planner.tokenGrant(name, now: now) {
        case .granted(let token, let userId, let expiresAt, let renewAt, let generation)?:
            return .granted(token: token, userId: userId, expiresAt: expiresAt.addingTimeInterval(-skew),
                            renewAt: outbound(renewAt), generation: generation)
        case .unavailable(let state, let retryAt, let reason)?:
            return .unavailable(state: state, retryAt: outbound(retryAt), reason: reason)
        case nil:
            return nil
        }
    }

    public func schedule(_ name: String) -> ContextSchedule? {
        planner.schedule(name, now: now).map { $0.shifted(by: -skew) }
    }

    /// The context due next and when.
    public func nextDue() -> (name: String, at: Date)? {
        planner.nextDue().map { ($0.name, $0.at.addingTimeInterval(-skew)) }
    }

    /// The earliest upcoming renewal or retry.
    public func nextDeadline() -> Date? {
        outbound(planner.nextDeadline())
    }

    /// The session-server budget: demand, supply and (above 100%, with `forecast`) who will run late; without
    /// `forecast`, the last forecast's list.
    public func budgetStatus(forecast: Bool = true) -> BudgetStatus {
        var status = planner.budgetStatus(now: now, forecastHorizon: forecast ? 86_400 : nil)
        if forecast { lastLate = status.late } else if status.utilisation > 1 { status.late = lastLate }
        return status
    }

    /// Renews now (also out of `needs_attention`) and returns once the new session is live or the attempt failed.
    public func renewNow(_ name: String) async -> Result<SessionInfo, RenewalError>? {
        guard planner.schedule(name, now: now) != nil else { return nil }
        planner.requestRenewal(name, now: now)
        wake.signal()
        return await waiters.wait(for: name)
    }

    /// Asks for a renewal without waiting (a configuration reload retries `needs_attention` contexts this way).
    public func requestRenewal(_ name: String) {
        planner.requestRenewal(name, now: now)
        wake.signal()
    }

    /// What a report that generation `generation`'s token was refused by bunq did.
    public enum InvalidReport: Sendable, Equatable {
        /// The token is withdrawn and a renewal is under way (started by this report or an earlier one).
        case renewing
        /// That generation was already replaced: the current one is newer.
        case alreadyReplaced
        /// No such generation (newer than the current one).
        case unknownGeneration
        /// The context needs attention: renewing cannot help until a human acts.
        case needsAttention
    }

    /// bunq refused generation `generation`'s token: that token is no longer handed out, and one renewal starts
    /// at once, at the head of the session-server queue: once per generation, however many callers report it.
    public func sessionInvalid(_ name: String, generation: Int) -> InvalidReport? {
        guard let current = planner.generation(name) else { return nil }
        if generation < current { return .alreadyReplaced }
        if generation > current { return .unknownGeneration }
        if planner.schedule(name, now: now)?.state == .needsAttention { return .needsAttention }
        planner.sessionInvalid(name, generation: generation, now: now)
        wake.signal()
        return .renewing
    }

    /// Waits until the context is past generation `generation` (a new session) or its renewal attempt fails;
    /// returns at once when it already is.
    public func renewal(of name: String, after generation: Int) async -> Result<SessionInfo, RenewalError>? {
        guard let current = planner.generation(name) else { return nil }
        if current > generation, case .granted(let token, let userId, let expiresAt, _, _)? = tokenGrant(name) {
            return .success(SessionInfo(token: token, userId: userId, created: expiresAt, expiresAt: expiresAt))
        }
        return await waiters.wait(for: name)
    }
}

/// Callers waiting for renewal outcomes, per context. A waiter whose task is cancelled leaves at once with a
/// `cancelled` failure (the renewal itself goes on): no wait of a caller outlives its task.
final class RenewalWaiters: Sendable {
    typealias Outcome = Result<SessionInfo, RenewalError>
    private let state = Mutex<(next: Int, waiting: [String: [Int: CheckedContinuation<Outcome, Never>]])>((0, [:]))

    func wait(for name: String) async -> Outcome {
        let id = state.withLock { state in
            state.next += 1
            return state.next
        }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let cancelled = state.withLock { state -> Bool in
                    if Task.isCancelled { return true }
                    state.waiting[name, default: [:]][id] = continuation
                    return false
                }
                if cancelled { continuation.resume(returning: Self.cancelled) }
            }
        } onCancel: {
            state.withLock { $0.waiting[name]?.removeValue(forKey: id) }?.resume(returning: Self.cancelled)
        }
    }

    static var cancelled: Outcome { .failure(RenewalError(.retryable, "the wait was cancelled", code: .cancelled)) }

    func resume(_ name: String, with outcome: Outcome) {
        for waiter in state.withLock({ $0.waiting.removeValue(forKey: name) ?? [:] }).values { waiter.resume(returning: outcome) }
    }

    func resumeAll(with outcome: Outcome) {
        let all = state.withLock { state in
            defer { state.waiting = [:] }
            return state.waiting.values.flatMap(\.values)
        }
        for waiter in all { waiter.resume(returning: outcome) }
    }
}

extension SessionScheduler where C == ContinuousClock {
    /// A scheduler on the real monotonic clock.
    public init(policy: RenewalPolicy, budget: SessionServerBudget = SessionServerBudget(), maxConcurrent: Int = 8) {
        self.init(policy: policy, budget: budget, maxConcurrent: maxConcurrent, clock: ContinuousClock())
    }
}

extension Duration {
    /// The duration in seconds, as a floating-point number.
    var seconds: TimeInterval {
        Double(components.seconds) + Double(components.attoseconds) / 1e18
    }
}

extension SessionInfo {
    /// The same session with its dates moved by `seconds` (from one timeline to another).
    func shifted(by seconds: TimeInterval) -> SessionInfo {
        seconds == 0 ? self : SessionInfo(id: id, token: token, userId: userId, created: created.addingTimeInterval(seconds),
                                          expiresAt: expiresAt.addingTimeInterval(seconds))
    }
}

extension ContextSchedule {
    /// The same schedule with its dates moved by `seconds`.
    func shifted(by seconds: TimeInterval) -> ContextSchedule {
        guard seconds != 0 else { return self }
        var copy = self
        copy.expiresAt = expiresAt?.addingTimeInterval(seconds)
        copy.renewAt = renewAt?.addingTimeInterval(seconds)
        copy.lastRenewedAt = lastRenewedAt?.addingTimeInterval(seconds)
        copy.nextRetryAt = nextRetryAt?.addingTimeInterval(seconds)
        return copy
    }
}
