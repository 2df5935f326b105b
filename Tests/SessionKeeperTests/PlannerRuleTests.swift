import BunqAPI
import Foundation
import SessionKeeper
import TestThreads
import Testing

extension RenewalPlanner {
    /// One pass of the scheduler's loop at `now`, with every preparation finishing at once: the contexts whose
    /// session-server call was granted (at most one, as the budget allows one call at a time).
    mutating func takeDue(now: Date, limit: Int = 8) -> [String] {
        collectDue(now: now)
        for name in startPreparations(limit: limit) { prepared(name, now: now) }
        return grantSessionCall(now: now).map { [$0] } ?? []
    }
}

@Suite(.ownThread) struct PlannerRuleTests {
    let t0 = Date(timeIntervalSince1970: 1_700_000_000)

    func session(_ created: Date, lifetime: TimeInterval = 600, token: String = "tok") -> SessionInfo {
        SessionInfo(token: token, userId: 9, created: created, expiresAt: created.addingTimeInterval(lifetime))
    }

    // An unlimited budget in these rules' tests: they are about when a context is due, not about the
    // session-server budget, which BudgetSimulationTests run at bunq's own limits in virtual time.
    @Test func bootstrappingIsDueAtOnceAndHealthySessionsAtTheirRenewalTime() {
        var planner = RenewalPlanner(policy: RenewalPolicy(), budget: .unlimited, random: SeededRandom(seed: 1))
        planner.add("new", session: nil, now: t0)
        planner.add("healthy", session: session(t0), now: t0)
        #expect(planner.takeDue(now: t0, limit: 10) == ["new"])
        #expect(planner.tokenGrant("new", now: t0) == .unavailable(state: .bootstrapping, retryAt: t0.addingTimeInterval(1), reason: nil))
        planner.succeeded("new", session: session(t0), now: t0)
        let renewAt = try! #require(planner.schedule("healthy", now: t0)?.renewAt)
        #expect(renewAt >= t0.addingTimeInterval(390) && renewAt <= t0.addingTimeInterval(510))
        #expect(planner.takeDue(now: renewAt.addingTimeInterval(-1), limit: 10).isEmpty)
        #expect(planner.takeDue(now: renewAt, limit: 10) == ["healthy"])
        #expect(planner.schedule("healthy", now: renewAt)?.state == .renewing)
    }

    @Test func theTokenRuleNeverHandsOutATokenInsideTheMargin() {
        var planner = RenewalPlanner(policy: RenewalPolicy(safetyMargin: 60), budget: .unlimited, random: SeededRandom(seed: 2))
        planner.add("a", session: session(t0, lifetime: 3_600), now: t0)
        #expect(planner.tokenGrant("a", now: t0.addingTimeInterval(3_539)) != nil)
        if case .granted = planner.tokenGrant("a", now: t0.addingTimeInterval(3_539)) {} else { Issue.record("should be granted") }
        guard case .unavailable(.expired, _, _)? = planner.tokenGrant("a", now: t0.addingTimeInterval(3_540)) else {
            Issue.record("a token with 60 s left must not be handed out")
            return
        }
        // Short sessions get a margin of a tenth of their lifetime.
        planner.add("short", session: session(t0, lifetime: 20), now: t0)
        if case .granted = planner.tokenGrant("short", now: t0.addingTimeInterval(17.9)) {} else { Issue.record("17.9 s of 20 is usable") }
        if case .granted = planner.tokenGrant("short", now: t0.addingTimeInterval(18.0)) { Issue.record("inside a 2 s margin") }
    }

    @Test func failuresBackOffExponentiallyWithJitterAndNeverZero() {
        var planner = RenewalPlanner(policy: RenewalPolicy(), budget: .unlimited, random: SeededRandom(seed: 3))
        planner.add("a", session: nil, now: t0)
        var now = t0
        var delays: [TimeInterval] = []
        for _ in 0..<12 {
            guard planner.takeDue(now: now, limit: 1) == ["a"] else { Issue.record("not due at \(now)"); return }
            planner.failed("a", error: RenewalError(.retryable, "HTTP 503"), now: now)
            let retry = planner.schedule("a", now: now)!.nextRetryAt!
            delays.append(retry.timeIntervalSince(now))
            now = retry
        }
        #expect(delays[0] >= 0.5 && delays[0] <= 1)
        #expect(delays[3] >= 4 && delays[3] <= 8)
        #expect(delays.allSatisfy { $0 >= 0.5 && $0 <= 300 })
        #expect(delays.last! >= 150, "capped at 5 minutes, jittered in the upper half")
        #expect(planner.schedule("a", now: now)?.consecutiveFailures == 12)
        #expect(planner.schedule("a", now: now)?.lastError == "HTTP 503")
    }

    @Test func rejectedCredentialsStopUntilExplicitlyRetried() {
        var planner = RenewalPlanner(policy: RenewalPolicy(), budget: .unlimited, random: SeededRandom(seed: 4))
        planner.add("a", session: session(t0), now: t0)
        let due = planner.schedule("a", now: t0)!.renewAt!
        _ = planner.takeDue(now: due, limit: 1)
        let entered = planner.failed("a", error: RenewalError(.needsAttention, "User credentials are incorrect."), now: due)
        #expect(entered, "entering needs_attention is reported, to log it once")
        #expect(planner.schedule("a", now: due)?.state == .needsAttention)
        #expect(planner.nextDeadline() == nil, "nothing is retried on its own")
        #expect(planner.tokenGrant("a", now: due) == .unavailable(state: .needsAttention, retryAt: nil, reason: "needs_attention"))
        // Nothing retries on its own, so it is reported once; an explicit retry that is rejected again is a new
        // event, reported once more.
        #expect(planner.takeDue(now: due.addingTimeInterval(86_400), limit: 1).isEmpty)
        planner.requestRenewal("a", now: due)
        _ = planner.takeDue(now: due, limit: 1)
        let enteredAgain = planner.failed("a", error: RenewalError(.needsAttention, "again"), now: due)
        #expect(enteredAgain)
        planner.requestRenewal("a", now: due)
        #expect(planner.takeDue(now: due, limit: 1) == ["a"])
        planner.succeeded("a", session: session(due, token: "new"), now: due)
        #expect(planner.schedule("a", now: due)?.state == .live)
        #expect(planner.schedule("a", now: due)?.generation == 1)
    }

    @Test func aReportedGenerationRenewsOnceAndItsTokenIsWithdrawn() {
        var planner = RenewalPlanner(policy: RenewalPolicy(), budget: .unlimited, random: SeededRandom(seed: 5))
        planner.add("a", session: session(t0), generation: 3, now: t0)
        let now = t0.addingTimeInterval(10)
        do { let reported = planner.sessionInvalid("a", generation: 2, now: now); #expect(!reported, "an older generation is already replaced") }
        do { let reported = planner.sessionInvalid("a", generation: 3, now: now); #expect(reported) }
        #expect(planner.schedule("a", now: now)?.state == .expired, "the reported token is no longer handed out")
        do { let reported = planner.sessionInvalid("a", generation: 3, now: now); #expect(!reported, "one renewal per generation") }
        do { let due = planner.takeDue(now: now); #expect(due == ["a"]) }
        planner.failed("a", error: RenewalError(.retryable, "timeout"), now: now)
        do { let reported = planner.sessionInvalid("a", generation: 3, now: now); #expect(!reported, "reported again before a success: nothing") }
        do { let due = planner.takeDue(now: now); #expect(due.isEmpty, "the backoff stands: no loop") }
        let retry = planner.schedule("a", now: now)!.nextRetryAt!
        do { let due = planner.takeDue(now: retry); #expect(due == ["a"]) }
        planner.succeeded("a", session: session(retry, token: "new"), now: retry)
        #expect(planner.generation("a") == 4)
        do { let reported = planner.sessionInvalid("a", generation: 4, now: retry); #expect(reported, "the new generation can be reported in turn") }
    }

    @Test func inFlightIsOnePerContextAndRemovalForgets() {
        var planner = RenewalPlanner(policy: RenewalPolicy(), budget: .unlimited, random: SeededRandom(seed: 6))
        planner.add("a", session: nil, now: t0)
        #expect(planner.takeDue(now: t0, limit: 5) == ["a"])
        planner.requestRenewal("a", now: t0)
        #expect(planner.takeDue(now: t0, limit: 5).isEmpty, "one renewal in flight per context")
        #expect(planner.inFlightCount == 1)
        planner.remove("a")
        #expect(planner.inFlightCount == 0 && planner.schedule("a", now: t0) == nil && planner.nextDeadline() == nil)
    }

    @Test func theSessionServerQueueGrantsByUrgencyOneSpacingApart() {
        let budget = SessionServerBudget()  // bunq's: one call per 30 s
        var planner = RenewalPlanner(policy: RenewalPolicy(), budget: budget, random: SeededRandom(seed: 7))
        // A routine renewal (expires in a day), a session at risk (usable 5 more minutes) and two new identities.
        planner.add("routine", session: session(t0.addingTimeInterval(-3.5 * 86_400), lifetime: 4 * 86_400), generation: 1, now: t0)
        planner.add("at-risk", session: session(t0.addingTimeInterval(-3_300), lifetime: 3_600), generation: 1, now: t0)
        planner.add("new-1", session: nil, now: t0)
        planner.add("new-2", session: nil, now: t0)
        var order: [String] = []
        var grants: [Date] = []
        var now = t0
        while order.count < 4, now < t0.addingTimeInterval(600) {
            if let name = planner.takeDue(now: now).first {
                order.append(name)
                grants.append(now)
                planner.succeeded(name, session: session(now, lifetime: 86_400, token: name), now: now)
            }
            now = now.addingTimeInterval(0.5)
        }
        #expect(order == ["at-risk", "new-1", "new-2", "routine"], "at risk, then new identities, then routine")
        for (previous, next) in zip(grants, grants.dropFirst()) {
            #expect(next.timeIntervalSince(previous) >= 30, "one session-server call per 30 s")
        }
        #expect(planner.budgetStatus(now: now).neededPerDay > 5, "four 1-day identities need 5.3 sessions a day")
    }

    @Test func aRateLimitedCallPushesTheWindowBack() {
        var planner = RenewalPlanner(policy: RenewalPolicy(), budget: SessionServerBudget(scale: 0.1), random: SeededRandom(seed: 8))
        planner.add("a", session: nil, now: t0)
        planner.add("b", session: nil, now: t0)
        let first = planner.takeDue(now: t0)
        #expect(first.count == 1)
        let at = t0.addingTimeInterval(1)
        planner.failed(first[0], error: RenewalError(.retryable, "429", code: .bunq(.rateLimited)), now: at)
        #expect(planner.takeDue(now: at.addingTimeInterval(2.9)).isEmpty, "no call within a window of the 429")
        #expect(planner.takeDue(now: at.addingTimeInterval(3.1)).count == 1)
    }

    @Test func aRemovedContextsCallHoldsTheBudgetUntilItEndsAndChangesNothing() {
        var planner = RenewalPlanner(policy: RenewalPolicy(), budget: SessionServerBudget(scale: 0.1), random: SeededRandom(seed: 9))
        planner.add("a", session: nil, now: t0)
        planner.add("b", session: nil, now: t0)
        #expect(planner.takeDue(now: t0) == ["a"])
        planner.remove("a")
        planner.add("a", session: nil, now: t0)  // removed and added anew while its call is under way
        #expect(planner.takeDue(now: t0.addingTimeInterval(10)).isEmpty, "the call under way still holds the budget")
        let late = t0.addingTimeInterval(12)
        #expect(planner.succeeded("a", session: session(t0, token: "old"), now: late) == 0, "the old call's answer is dropped")
        #expect(planner.schedule("a", now: late)?.generation == 0, "the new context is untouched")
        #expect(planner.takeDue(now: late.addingTimeInterval(3)).isEmpty, "one window after that call ended")
        #expect(planner.takeDue(now: late.addingTimeInterval(3.1)).count == 1)
    }
}
