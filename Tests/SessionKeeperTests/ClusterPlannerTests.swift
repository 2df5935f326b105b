import Foundation
import SessionKeeper
import TestThreads
import Testing

/// The cluster's rules that need no store: who renews what (the planner follows contexts it does not hold and
/// renews only those it does), how a newer session from another daemon is taken over, and the fair share.
@Suite(.ownThread) struct ClusterPlannerTests {
    let start = Date(timeIntervalSince1970: 1_800_000_000)

    func session(_ token: String, created: Date, lifetime: TimeInterval = 3_600) -> SessionInfo {
        SessionInfo(token: token, userId: 1, created: created, expiresAt: created + lifetime)
    }

    // An unlimited budget in these rules' tests: they are about when a context is due, not about the
    // session-server budget, which BudgetSimulationTests run at bunq's own limits in virtual time.
    @Test func aFollowedContextIsNeverRenewedHereUntilItsLeaseIsHeld() {
        var planner = RenewalPlanner(policy: RenewalPolicy(), budget: .unlimited, random: SystemRandomNumberGenerator())
        planner.add("ops", session: session("T1", created: start), generation: 1, held: false, now: start)
        planner.add("new", session: nil, held: false, now: start)
        // Far past every renewal time: nothing is due while not held.
        let due = planner.takeDue(now: start + 3_500)
        #expect(due.isEmpty)
        #expect(planner.heldNames.isEmpty)
        // The lease arrives: the overdue renewal runs at once.
        planner.setHeld("ops", true, now: start + 3_500)
        let due1 = planner.takeDue(now: start + 3_500)
        #expect(due1 == ["ops"])
        #expect(planner.isBusy("ops"))
        // Lost mid-call (the commit was fenced): not a failure, and not renewed here again.
        planner.failed("ops", error: RenewalError(.retryable, "lost", code: .leaseLost), now: start + 3_501)
        #expect(planner.schedule("ops", now: start + 3_501)?.consecutiveFailures == 0)
        #expect(!planner.isHeld("ops") && !planner.isBusy("ops"))
        let due2 = planner.takeDue(now: start + 3_590)
        #expect(due2.isEmpty)
    }

    @Test func aQueuedRenewalLeavesTheQueueWhenTheLeaseGoes() {
        var planner = RenewalPlanner(policy: RenewalPolicy(), budget: SessionServerBudget(), random: SystemRandomNumberGenerator())
        planner.add("a", session: session("A", created: start), generation: 1, now: start)
        planner.add("b", session: session("B", created: start), generation: 1, now: start)
        let due3 = planner.takeDue(now: start + 3_500)
        #expect(due3.count == 1)  // one call; the other waits in the queue
        let queued = planner.calling == "a" ? "b" : "a"
        #expect(planner.isBusy(queued))
        let other = queued == "a" ? "b" : "a"
        planner.setHeld(queued, false, now: start + 3_500)
        #expect(!planner.isBusy(queued))
        planner.succeeded(other, session: session("N", created: start + 3_500), now: start + 3_500)
        let due4 = planner.takeDue(now: start + 3_540)
        #expect(due4.isEmpty, "the released context is not called for here")
    }

    @Test func aNewerSessionFromAnotherDaemonIsServedAndAnOlderOneIgnored() {
        var planner = RenewalPlanner(policy: RenewalPolicy(), budget: .unlimited, random: SystemRandomNumberGenerator())
        planner.add("ops", session: session("T1", created: start), generation: 3, held: false, now: start)
        let older = planner.adopt("ops", session: session("OLD", created: start - 10), generation: 2, now: start + 1)
        let newer = planner.adopt("ops", session: session("T4", created: start + 2_000), generation: 4, now: start + 2_000)
        #expect(!older && newer)
        guard case .granted(let token, _, _, let renewAt, let generation)? = planner.tokenGrant("ops", now: start + 2_001) else {
            Issue.record("no token")
            return
        }
        #expect(token == "T4" && generation == 4)
        #expect(renewAt.map { $0 > start + 2_000 + 3_600 * 0.6 } == true, "renewed at its own time, by its holder")
        // A failure this daemon saw is healed by the holder's newer session.
        planner.setHeld("ops", true, now: start + 2_001)
        let due5 = planner.takeDue(now: start + 5_500)
        #expect(due5 == ["ops"])
        planner.failed("ops", error: RenewalError(.needsAttention, "rejected"), now: start + 5_501)
        #expect(planner.schedule("ops", now: start + 5_501)?.state == .needsAttention)
        let healed = planner.adopt("ops", session: session("T5", created: start + 5_502), generation: 5, now: start + 5_502)
        #expect(healed)
        #expect(planner.schedule("ops", now: start + 5_502)?.state == .live)
    }

    @Test func leasesSpreadOverEgressGroupsThenOverTheirMembers() {
        func member(_ instance: String, _ group: String) -> ClusterMember {
            ClusterMember(instance: instance, egressGroup: group, leases: 0)
        }
        let three = [member("a", "g1"), member("b", "g2"), member("c", "g3")]
        #expect(ClusterSettings.fairShare(contexts: 10, members: three, instance: "a", egressGroup: "g1") == 4)
        // Two daemons share one IP, one has its own: the IPs split the work, then each IP's daemons.
        let uneven = [member("a", "g1"), member("b", "g1"), member("c", "g2")]
        let shareA = ClusterSettings.fairShare(contexts: 10, members: uneven, instance: "a", egressGroup: "g1")
        let shareC = ClusterSettings.fairShare(contexts: 10, members: uneven, instance: "c", egressGroup: "g2")
        #expect(shareA == 3 && shareC == 5)
        #expect(2 * shareA + shareC >= 10, "the shares cover every context")
        // Alone (or not yet seen by the others): everything.
        #expect(ClusterSettings.fairShare(contexts: 7, members: [], instance: "a", egressGroup: "g1") == 7)
        for contexts in 0..<50 {
            let shares = uneven.map {
                ClusterSettings.fairShare(contexts: contexts, members: uneven, instance: $0.instance, egressGroup: $0.egressGroup)
            }
            #expect(shares.reduce(0, +) >= contexts && shares.max()! - shares.min()! <= contexts / 2 + 1)
        }
    }
}
