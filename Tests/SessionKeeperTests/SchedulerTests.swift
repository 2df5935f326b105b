import Foundation
import SessionKeeper
import Synchronization
import TestThreads
import Testing
import TestSupport

/// A renewer standing in for bunq: sessions of a fixed lifetime, a failure rate, and a list of rejected contexts.
final class FakeRenewer: SessionRenewer {
    let lifetime: TimeInterval
    let failureRate: Double
    let calls = Mutex<[String: Int]>([:])
    let rejected = Mutex<Set<String>>([])

    init(lifetime: TimeInterval, failureRate: Double = 0) {
        self.lifetime = lifetime
        self.failureRate = failureRate
    }

    func prepare(_ context: String) async -> Result<Void, RenewalError> {
        try? await Task.sleep(for: .milliseconds(Int.random(in: 1...10)))
        return .success(())
    }

    func openSession(_ context: String) async -> Result<SessionInfo, RenewalError> {
        let count = calls.withLock { $0[context, default: 0] += 1; return $0[context]! }
        try? await Task.sleep(for: .milliseconds(Int.random(in: 5...40)))
        if rejected.withLock({ $0.contains(context) }) {
            return .failure(RenewalError(.needsAttention, "User credentials are incorrect."))
        }
        if Double.random(in: 0..<1) < failureRate { return .failure(RenewalError(.retryable, "HTTP 500")) }
        let now = Date()
        return .success(SessionInfo(token: "\(context)-\(count)", userId: 1, created: now,
                                    expiresAt: now.addingTimeInterval(lifetime)))
    }
}

@Suite(.ownThread) struct SchedulerTests {
    /// The loop's progress is what this test measures: it runs as a child of the test's task, on the suite's own
    /// thread (on the shared cooperative pool other tests' blocking calls once held it up, generations stuck at 2
    /// for 60 s).
    @Test func contextsStayLiveThroughRenewalsAndFailures() async throws {
        let renewer = FakeRenewer(lifetime: 1.5, failureRate: 0.3)
        // Twenty identities of 1.5-s sessions need 18 sessions a second: the session-server budget is unlimited
        // here; the budget's own tests run in virtual time (BudgetSimulationTests).
        let names = (0..<20).map { "ctx-\($0)" }
        let scratch = try await ScratchRegistry(names, policy: RenewalPolicy(backoffBase: 0.05, backoffMax: 0.2),
                                                budget: .unlimited)
        defer { scratch.remove() }
        let scheduler = scratch.registry
        var grantedTooLate = 0
        var generations: [Int] = []
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await scheduler.run(renewing: renewer) }
            // Awaits progress with a deadline, sampling every grant on the way, so a loaded machine slows the test
            // instead of failing it.
            _ = await eventually(within: .seconds(60)) {
                generations = []
                for name in names {
                    // The planner decides with its own clock, read after `before`: a grant must outlive the margin from
                    // `before` on.
                    let before = Date()
                    if case .granted(_, _, let expiresAt, _, _)? = await scheduler.tokenGrant(name),
                       expiresAt.timeIntervalSince(before) < 0.15 { grantedTooLate += 1 }
                    generations.append(await scheduler.schedule(name)?.generation ?? 0)
                }
                return generations.allSatisfy { $0 >= 3 }
            }
            group.cancelAll()
        }
        #expect(grantedTooLate == 0)
        #expect(generations.allSatisfy { $0 >= 3 }, "every context renewed through failures: \(generations)")
        let calls = renewer.calls.withLock { $0 }
        #expect(calls.values.reduce(0, +) > 60, "failures were retried: \(calls)")
    }

    @Test func renewNowWaitsForTheNewSessionAndRejectionsNeedAttention() async throws {
        let renewer = FakeRenewer(lifetime: 600)
        let scratch = try await ScratchRegistry([], policy: RenewalPolicy(), budget: SessionServerBudget(scale: 0.001))
        defer { scratch.remove() }
        let scheduler = scratch.registry
        let loop = Task { await scheduler.run(renewing: renewer) }
        await scratch.add(["a", "b"])
        var events = scheduler.events.makeAsyncIterator()
        var rotated: Set<String> = []
        while rotated.count < 2, let change = await events.next() {
            if case .rotated(let context, 1, _) = change.event {
                rotated.insert(context)
                #expect(change.entry?.generation == 1, "the snapshot is published with the event")
            }
        }
        guard case .granted(let token, _, _, _, 1)? = await scheduler.tokenGrant("a") else {
            Issue.record("a is not live")
            return
        }
        let renewed = try #require(await scheduler.renewNow("a"))
        #expect(try renewed.get().token != token)
        guard case .granted(_, _, _, _, 2)? = await scheduler.tokenGrant("a") else {
            Issue.record("renewNow returned before the new session was live")
            return
        }

        renewer.rejected.withLock { _ = $0.insert("b") }
        let rejected = try #require(await scheduler.renewNow("b"))
        #expect(throws: RenewalError.self) { try rejected.get() }
        #expect(await scheduler.tokenGrant("b") == .unavailable(state: .needsAttention, retryAt: nil,
                                                          reason: "needs_attention"))
        let callsBefore = renewer.calls.withLock { $0["b"] ?? 0 }
        try await Task.sleep(for: .milliseconds(300))
        #expect(renewer.calls.withLock { $0["b"] ?? 0 } == callsBefore, "needs_attention is not retried on its own")
        #expect(await scheduler.renewNow("missing") == nil)
        loop.cancel()
        await loop.value
    }
}
