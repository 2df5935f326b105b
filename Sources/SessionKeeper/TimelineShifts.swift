import Foundation

// Moving dates between the wall clock's timeline and the registry's (the monotonic clock's, anchored at start).

extension Duration {
    /// The duration in seconds, as a floating-point number.
    var seconds: TimeInterval {
        Double(components.seconds) + Double(components.attoseconds) / 1e18
    }
}

extension SessionInfo {
    /// The same session with its dates moved by `seconds` (from one timeline to another).
    func shifted(by seconds: TimeInterval) -> SessionInfo {
        seconds == 0 ? self : SessionInfo(id: id, token: token, userId: userId, created: created.addingTimeInterval(seconds),
                                          expiresAt: expiresAt.addingTimeInterval(seconds))
    }
}

extension ContextSchedule {
    /// The same schedule with its dates moved by `seconds`.
    func shifted(by seconds: TimeInterval) -> ContextSchedule {
        guard seconds != 0 else { return self }
        var copy = self
        copy.expiresAt = expiresAt?.addingTimeInterval(seconds)
        copy.renewAt = renewAt?.addingTimeInterval(seconds)
        copy.lastRenewedAt = lastRenewedAt?.addingTimeInterval(seconds)
        copy.nextRetryAt = nextRetryAt?.addingTimeInterval(seconds)
        return copy
    }
}
