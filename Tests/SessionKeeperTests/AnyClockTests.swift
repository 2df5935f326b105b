import TestSupport
import TestThreads
import Testing
import Timekeeping

/// The injected clock: instants that compare across every `AnyClock` over the real clock, and sleeps that follow
/// the clock behind them (a manual one moved by hand, cancellation included).
@Suite(.ownThread) struct AnyClockTests {
    @Test func everyClockOverContinuousClockSharesOneOrigin() async throws {
        let first = AnyClock.continuous.now
        let second = AnyClock(ContinuousClock()).now
        // Made at different moments, both measure from the process's one origin: an instant of one is an instant
        // of the other (a fresh origin would put the second at about zero).
        #expect(first <= second && second - first < .seconds(5))
        try await AnyClock(ContinuousClock()).sleep(until: second + .milliseconds(20))
        #expect(AnyClock.continuous.now >= second + .milliseconds(20), "a sleep ends no earlier than its deadline")
    }

    @Test func sleepsFollowTheClockBehindAndEndOnCancellation() async throws {
        let manual = ManualClock()
        let clock = manual.erased
        let woke = Flag()
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                try await clock.sleep(until: clock.now + .seconds(5))
                woke.set()
            }
            #expect(await eventually(within: .seconds(10), every: .milliseconds(1)) { manual.sleeping == 1 })
            manual.advance(by: .seconds(4))
            #expect(!woke.isSet, "four seconds in, the five-second sleep goes on")
            manual.advance(by: .seconds(1))
            try await group.waitForAll()
            #expect(woke.isSet && clock.now.offset == .seconds(5))
        }
        let cancelled = Task { try await clock.sleep(until: clock.now + .seconds(60)) }
        #expect(await eventually(within: .seconds(10), every: .milliseconds(1)) { manual.sleeping == 1 })
        cancelled.cancel()
        await #expect(throws: CancellationError.self) { try await cancelled.value }
        #expect(manual.sleeping == 0, "a cancelled sleeper is gone")
    }
}
