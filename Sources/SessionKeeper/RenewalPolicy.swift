import Foundation

/// When to renew and how to back off: renew at ~75% of a session's lifetime (±10% jitter, so identities created
/// together do not renew together), never later than a safety margin before expiry; retry failures with
/// exponential backoff and jitter, never a zero sleep.
public struct RenewalPolicy: Sendable, Equatable {
    /// The point of the lifetime at which to renew (0.75).
    public var renewFraction: Double = 0.75
    /// Jitter around `renewFraction`, as a fraction of the lifetime (0.10: renew between 65% and 85%).
    public var jitterFraction: Double = 0.10
    /// Time before expiry from which a token is no longer handed out and a renewal must be done: at most this,
    /// and at most a tenth of the session's lifetime (so short test sessions still work).
    public var safetyMargin: TimeInterval = 60
    /// The first retry delay after a failure; doubles per consecutive failure.
    public var backoffBase: TimeInterval = 1
    /// The longest retry delay.
    public var backoffMax: TimeInterval = 300

    public init(safetyMargin: TimeInterval = 60, backoffBase: TimeInterval = 1, backoffMax: TimeInterval = 300) {
        self.safetyMargin = safetyMargin
        self.backoffBase = backoffBase
        self.backoffMax = backoffMax
    }

    /// The margin that applies to a session of `lifetime` seconds.
    public func margin(lifetime: TimeInterval) -> TimeInterval {
        max(0.001, min(safetyMargin, lifetime / 10))
    }

    /// When to renew a session created at `created` that expires at `expiresAt`.
    public func renewAt(created: Date, expiresAt: Date, using random: inout some RandomNumberGenerator) -> Date {
        let lifetime = max(0, expiresAt.timeIntervalSince(created))
        let fraction = renewFraction + Double.random(in: -jitterFraction...jitterFraction, using: &random)
        let planned = created.addingTimeInterval(lifetime * fraction)
        let latest = expiresAt.addingTimeInterval(-margin(lifetime: lifetime))
        return min(planned, latest)
    }

    /// The wait after the `failures`-th consecutive failure: base·2^(failures-1), capped, with jitter in its upper
    /// half, so it is never zero and identities that failed together spread out.
    public func backoff(failures: Int, using random: inout some RandomNumberGenerator) -> TimeInterval {
        let exponent = Double(min(max(failures, 1) - 1, 30))
        let ceiling = min(backoffMax, backoffBase * pow(2, exponent))
        return Double.random(in: (ceiling / 2)...ceiling, using: &random)
    }
}

/// A deterministic random source for tests and simulations (SplitMix64).
public struct SeededRandom: RandomNumberGenerator, Sendable {
    private var state: UInt64

    public init(seed: UInt64) {
        state = seed
    }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
