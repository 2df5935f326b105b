import Foundation
import SessionKeeper
import TestThreads
import Testing
import Timekeeping

/// The waits a shutdown depends on honour cancellation, and the published snapshots keep their state counts.
@Suite(.ownThread) struct WaitsAndSnapshotsTests {
    @Test func aMilestoneWaitEndsOnCancellationAndOnFailure() async throws {
        let never = OneShotSignal()
        let waiter = Task { try await never.fired() }
        try await Task.sleep(for: .milliseconds(50))
        waiter.cancel()
        await #expect(throws: CancellationError.self) { try await waiter.value }

        let failing = OneShotSignal()
        let early = Task { try await failing.fired() }
        try await Task.sleep(for: .milliseconds(50))
        failing.fail()
        await #expect(throws: OneShotSignal.Failed.self) { try await early.value }
        await #expect(throws: OneShotSignal.Failed.self) { try await failing.fired() }
        #expect(!failing.hasFired)

        let fired = OneShotSignal()
        fired.fire()
        try await fired.fired()
        #expect(fired.hasFired)
    }

    @Test func aCallerWaitingForARenewalLeavesWhenCancelled() async throws {
        // The loop does not run: the renewal never comes, only the caller's cancellation ends the wait (bunq's
        // own session-server budget, which nothing spends here).
        let scratch = try await ScratchRegistry(["ops"], policy: RenewalPolicy(), budget: SessionServerBudget())
        defer { scratch.remove() }
        let scheduler = scratch.registry
        let waiting = Task { await scheduler.renewNow("ops") }
        try await Task.sleep(for: .milliseconds(50))
        waiting.cancel()
        let outcome: Result<SessionInfo, RenewalError>? = await waiting.value
        guard case .failure(let error)? = outcome else {
            Issue.record("a cancelled wait returns a failure")
            return
        }
        #expect(error.code == .cancelled)
    }

    @Test func stateCountsFollowEveryPublication() {
        let table = SessionTable(clock: .continuous)
        func entry(_ name: String, _ state: ContextState) -> SessionEntry {
            SessionEntry(context: name, kind: .apiKey, session: nil, renewAt: nil, generation: 0, serverPublicKeyPEM: nil,
                       usableUntil: nil, state: state)
        }
        table.set(entry("a", .live))
        table.set(entry("b", .live))
        table.set(entry("c", .bootstrapping))
        #expect(table.stateCounts == [.live: 2, .bootstrapping: 1])
        table.set(entry("c", .live))
        table.set(entry("a", .needsAttention))
        #expect(table.stateCounts == [.live: 2, .needsAttention: 1])
        table.remove("a")
        table.remove("ghost")
        #expect(table.stateCounts == [.live: 2] && table.count == 2)
    }
}
