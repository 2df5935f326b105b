import Foundation
import SessionKeeper
import Synchronization
import TestSupport
import TestThreads
import Testing
import Timekeeping

/// A bunq for the virtual-time scheduler: sessions anchored to the (steppable) wall clock at the request, as
/// BunqClient anchors them, and each token's true end on the monotonic clock.
final class VirtualBunq: SessionRenewer {
    let clock: ManualClock
    let wall: @Sendable () -> Date
    let lifetime: TimeInterval
    let trueEnd = Mutex<[String: ManualClock.Instant]>([:])
    let calls = Mutex<[String: Int]>([:])

    init(clock: ManualClock, wall: @escaping @Sendable () -> Date, lifetime: TimeInterval) {
        self.clock = clock
        self.wall = wall
        self.lifetime = lifetime
    }

    func prepare(_ context: String) async -> Result<Void, RenewalError> { .success(()) }

    func openSession(_ context: String) async -> Result<SessionInfo, RenewalError> {
        let count = calls.withLock { $0[context, default: 0] += 1; return $0[context]! }
        let token = "\(context)-\(count)"
        trueEnd.withLock { $0[token] = clock.now.advanced(by: .seconds(lifetime)) }
        let sent = wall()
        return .success(SessionInfo(token: token, userId: 1, created: sent, expiresAt: sent.addingTimeInterval(lifetime)))
    }
}

@Suite(.ownThread) struct VirtualClockSchedulerTests {
    /// The real registry's loop on a virtual monotonic clock, while the wall clock jumps 10 minutes ahead, then
    /// 20 minutes back: no token is handed out past its true end, and renewals keep their pace (no loop, no gap).
    @Test func aSteppingWallClockMovesNoDeadline() async throws {
        let clock = ManualClock()
        let wallOffset = Mutex<TimeInterval>(0)
        let base = Date()
        let start = clock.now
        let wall: @Sendable () -> Date = {
            base.addingTimeInterval(start.duration(to: clock.now).seconds + wallOffset.withLock { $0 })
        }
        let bunq = VirtualBunq(clock: clock, wall: wall, lifetime: 60)
        let names = ["a", "b", "c"]
        let scratch = try await ScratchRegistry(names, policy: RenewalPolicy(), budget: SessionServerBudget(scale: 0.1),
                                                clock: AnyClock(clock), wallClock: wall)
        defer { scratch.remove() }
        let scheduler = scratch.registry
        let loop = Task { await scheduler.run(renewing: bunq) }
        var pastTrueEnd = 0, granted = 0
        for step in 1...1_200 {  // 600 virtual seconds in half-second steps
            clock.advance(by: .milliseconds(500))
            if step == 240 { wallOffset.withLock { $0 = 600 } }     // at 2 min: the wall clock jumps 10 min ahead
            if step == 600 { wallOffset.withLock { $0 = -600 } }    // at 5 min: and 20 min back
            // Idle before anyone asks: the loop sleeps on the clock again and no renewal is under way.
            let settled = await eventually(within: .seconds(30), every: .milliseconds(1)) {
                let running = await scheduler.runningRenewals
                return running == 0 && clock.sleeping == 1
            }
            #expect(settled, "the scheduler settles at step \(step)")
            for name in names {
                if case .granted(let token, _, _, _, _)? = await scheduler.tokenGrant(name) {
                    granted += 1
                    let end = try #require(bunq.trueEnd.withLock { $0[token] })
                    // The token rule's margin for 60-s sessions is 6 s.
                    if clock.now.duration(to: end) < .seconds(6) { pastTrueEnd += 1 }
                }
            }
        }
        loop.cancel()
        await loop.value
        #expect(granted > 3_000, "tokens were handed out throughout: \(granted)")
        #expect(pastTrueEnd == 0, "no token handed out within 6 s of its true end")
        let calls = bunq.calls.withLock { $0 }
        // 600 s of 60-s sessions renewed at 65–85% of their life: 12 to 16 sessions each, whatever the wall clock did.
        #expect(names.allSatisfy { (11...17).contains(calls[$0] ?? 0) }, "renewals on schedule: \(calls)")
        let status = await scheduler.budgetStatus()
        #expect(abs(status.utilisation - 3 * 86_400 / 45 / 28_800) < 0.01, "3 identities of 60 s at a tenth: \(status)")
    }
}

extension Duration {
    fileprivate var seconds: TimeInterval { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
