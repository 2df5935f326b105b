import AsyncAlgorithms

/// Runs `body` at once and then at every tick of `interval` on `clock`, until the calling task is cancelled:
/// the daemon's periodic work (certificate and budget checks, gauges, the STATUS line, the watchdog) runs on
/// `AsyncTimerSequence` over an injected clock rather than in hand-written sleep loops, so a test moves it with
/// a manual clock. A tick that comes while `body` still runs is not queued: the next call starts at the next
/// tick after it returns.
public func every<C: Clock>(_ interval: Duration, on clock: C, immediately: Bool = true,
                            _ body: () async -> Void) async where C.Duration == Duration {
    if immediately {
        guard !Task.isCancelled else { return }
        await body()
    }
    for await _ in AsyncTimerSequence(interval: interval, clock: clock) {
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
