/// Awaits `condition` until it holds or `within` passes (checked every `every`): a test waits for what it expects
/// with a deadline, never for a fixed time. True when it held.
public func eventually(within: Duration, every: Duration = .milliseconds(50),
                       _ condition: () async throws -> Bool) async rethrows -> Bool {
    let deadline = ContinuousClock.now + within
    while true {
        if try await condition() { return true }
        guard ContinuousClock.now < deadline else { return false }
        try? await Task.sleep(for: every)
    }
}
