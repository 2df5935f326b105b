import BunqAPI
import Foundation
import Timekeeping

/// Makes new sessions for a context, in the two steps the session-server budget needs. The registry's loop
/// calls at most one of them at a time per context.
public protocol SessionRenewer: Sendable {
    /// Bootstraps what is missing up to the session-server call (key, installation, PSD2 credential, device).
    /// Never calls session-server: it holds no slot of that budget.
    func prepare(_ context: String) async -> Result<Void, RenewalError>
    /// The session-server call, made at once: the loop has just granted this context the budget's slot.
    func openSession(_ context: String) async -> Result<SessionInfo, RenewalError>
}

/// Something a renewal did that others may want to hear about (logs, socket subscriptions).
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

/// The renewal loop, and the writes a renewal makes. One task sleeps until the earliest deadline of all contexts
/// (or until woken), moves due renewals on in earliest-deadline-first order, bootstraps at most `maxConcurrent`
/// new identities at once, and grants the session-server budget one call at a time to the most urgent queued
/// context. A renewal's writes present the incarnation it started for; its outcome updates the schedule and
/// publishes the snapshot in one step.
extension ContextRegistry {
    /// Runs until the calling task is cancelled, making new sessions with `renewer`; renewals in flight are
    /// cancelled with it. The renewer is given here rather than at init: it writes through the registry, which
    /// is made first, so nothing is wired afterwards.
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
            let entry = publish(name)
            eventContinuation.yield(ContextEvent(event: .rotated(context: name, generation: generation, expiresAt: session.expiresAt),
                                                 entry: entry, kind: contexts[name]?.record.kind))
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
        let entry = publish(name)
        eventContinuation.yield(ContextEvent(event: .failed(context: name, error: error,
                                                            consecutiveFailures: schedule?.consecutiveFailures ?? 0,
                                                            nextRetryAt: outbound(schedule?.nextRetryAt),
                                                            enteredNeedsAttention: entered),
                                             entry: entry, kind: contexts[name]?.record.kind))
        waiters.resume(name, with: .failure(error))
    }

    // MARK: Writes by a renewal (conditioned on its incarnation)

    /// A bootstrap step's result. Refused (`gone`) when the context is no longer `incarnation`.
    func saveRegistration(_ name: String, incarnation: UInt64, _ registration: IdentityRegistration) async throws {
        try await inTurn(name) {
            guard contexts[name]?.incarnation == incarnation else { throw Self.gone(name) }
            if let fencing {
                try await fenced(name, fencing) { fence in
                    try await fencing.store.updateRegistration(name, registration, fence: fence, by: fencing.instance)
                }
            } else {
                try await store.updateRegistration(name, registration)
            }
            // Forgotten meanwhile (another daemon removed it): the write was refused or will be deleted with the row.
            guard var owned = contexts[name], owned.incarnation == incarnation else { throw Self.gone(name) }
            owned.record.serverPublicKeyPEM = registration.serverPublicKeyPEM
            contexts[name] = owned
            publishKey(name, registration)
        }
    }

    /// A new session, committed before anyone may use it (its schedule and snapshot follow when the renewal
    /// completes). Refused (`gone`) when the context is no longer `incarnation`.
    func commitSession(_ name: String, incarnation: UInt64, _ session: SessionInfo, generation: Int,
                       registration: IdentityRegistration) async throws {
        try await inTurn(name) {
            guard contexts[name]?.incarnation == incarnation else { throw Self.gone(name) }
            if let fencing {
                try await fenced(name, fencing) { fence in
                    try await fencing.store.saveSession(name, session, generation: generation, registration: registration,
                                                        fence: fence, by: fencing.instance)
                }
            } else {
                try await store.saveSession(name, session, generation: generation, registration: registration)
            }
            guard var owned = contexts[name], owned.incarnation == incarnation else { throw Self.gone(name) }
            owned.record.session = session
            owned.record.generation = generation
            owned.record.serverPublicKeyPEM = registration.serverPublicKeyPEM
            contexts[name] = owned
            publishKey(name, registration)
        }
    }

    // MARK: Schedules, grants and renewals on demand

    /// A new renewal policy (a configuration reload): applies to every renewal scheduled from now on.
    public func setPolicy(_ policy: RenewalPolicy) {
        planner.policy = policy
    }

    /// Makes the loop wake at least every `interval` (for a watchdog pinging at about twice that period).
    public func setMaxSleep(_ interval: TimeInterval) {
        maxSleep = max(0.05, interval)
        wake.signal()
    }

    /// The contexts scheduled, sorted.
    public var contextNames: [String] { planner.contextNames.sorted() }

    /// Every context's state now, in one call.
    public func states() -> [String: ContextState] { planner.states(now: now) }

    /// Whether a renewal of the context is under way here.
    public func isBusy(_ name: String) -> Bool { planner.isBusy(name) }

    /// Renewal calls under way: bootstrap steps being prepared, and the session-server call (at most one). A test
    /// on a manual clock knows the daemon is idle when each of these, and the loop, sleeps on the clock.
    public var runningRenewals: Int { planner.preparingCount + (planner.calling == nil ? 0 : 1) }

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

    /// bunq refused generation `generation`'s token: that token is no longer handed out (the snapshot is
    /// withdrawn), and one renewal starts at once, at the head of the session-server queue: once per generation,
    /// however many callers report it.
    public func sessionInvalid(_ name: String, generation: Int) -> InvalidReport? {
        guard let current = planner.generation(name) else { return nil }
        if generation < current { return .alreadyReplaced }
        if generation > current { return .unknownGeneration }
        if planner.schedule(name, now: now)?.state == .needsAttention { return .needsAttention }
        planner.sessionInvalid(name, generation: generation, now: now)
        publish(name)
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
