import AsyncAlgorithms

/// Runs `body` at once and then at every tick of `interval` on `clock`, until the calling task is cancelled:
/// the daemon's periodic work (certificate and budget checks, gauges, the STATUS line, the watchdog) runs on
/// `AsyncTimerSequence` over an injected clock rather than in hand-written sleep loops, so a test moves it with
/// a manual clock.
///
/// Missed ticks are not made up: `AsyncTimerSequence` delivers every tick it owes at once after a body that ran
/// long, a machine that was suspended or a manual clock moved by a day; a tick that comes less than half an
/// interval after the last call is dropped, so such a gap costs one call, not one per interval missed.
public func every<C: Clock>(_ interval: Duration, on clock: C, immediately: Bool = true,
                            _ body: () async -> Void) async where C.Duration == Duration {
    var lastCall: C.Instant?
    if immediately {
        guard !Task.isCancelled else { return }
        lastCall = clock.now
        await body()
    }
    for await tick in AsyncTimerSequence(interval: interval, clock: clock) {
        if let lastCall, lastCall.duration(to: tick) < interval / 2 { continue }
        lastCall = tick
        await body()
    }
}

/// Calls `check` at once and then at every tick of `interval` on `clock` until it returns true or the calling
/// task is cancelled: a wait for a condition that no event announces (the daemon's first registrations).
public func poll<C: Clock>(every interval: Duration, on clock: C, until check: () async -> Bool) async
    where C.Duration == Duration {
    guard !Task.isCancelled, await !check() else { return }
    for await _ in AsyncTimerSequence(interval: interval, clock: clock) {
        if await check() { return }
    }
}
