import Foundation

/// The session-server budget of one egress IP: bunq allows one `POST session-server` per 30 s per IP, so this,
/// not CPU, decides how many identities one daemon can keep alive and how fast a new one goes live.
///
/// The planner grants it one call at a time, by urgency, and spaces calls by the window measured from the end of
/// the previous call: bunq counts a call when it arrives, which is never after our answer came back, so two of our
/// calls can never arrive closer than the window, whatever the network's latency.
public struct SessionServerBudget: Sendable, Equatable {
    /// bunq's window: 30 s, times the testing scale.
    public var window: TimeInterval
    /// A session whose last usable moment (expiry minus the safety margin) is this close is *at risk*: it goes
    /// ahead of new identities' first sessions. Twenty windows: ten minutes at bunq's limits.
    public var atRiskHorizon: TimeInterval
    /// Sessions are renewed at this fraction of their lifetime: the demand is one session per this much of it.
    public var renewFraction: Double

    /// bunq's limit, windows multiplied by `scale` (testing; 0.1 = one call per 3 s).
    public init(scale: Double = 1, renewFraction: Double = 0.75) {
        window = 30 * scale
        atRiskHorizon = 20 * window
        self.renewFraction = renewFraction
    }

    /// No limit at all (`rate_limits: unlimited`, against an emulator run with `--rate-limits off`).
    public static let unlimited: SessionServerBudget = {
        var budget = SessionServerBudget(scale: 0)
        budget.atRiskHorizon = 600
        return budget
    }()

    /// The time from the end of one call to the start of the next: the window plus 1% (timer slack).
    public var spacing: TimeInterval { window * 1.01 }

    /// Session-server calls one IP can make a day: 2,880 at bunq's limits.
    public var availablePerDay: Double { window > 0 ? 86_400 / window : .infinity }

    /// Sessions a day that an identity with sessions of `lifetime` seconds needs.
    public func demandPerDay(lifetime: TimeInterval) -> Double {
        lifetime > 0 ? 86_400 / (renewFraction * lifetime) : 0
    }
}

/// What `daemon.status` and the STATUS line say about the budget.
public struct BudgetStatus: Sendable, Equatable {
    /// Session-server calls a day that keeping every identity alive needs (one per 75% of each lifetime).
    public var neededPerDay: Double
    /// What one IP gets at bunq's limits (2,880 a day).
    public var availablePerDay: Double
    /// needed ÷ available: above 0.8 a warning, above 1 identities will run late.
    public var utilisation: Double { availablePerDay.isFinite && availablePerDay > 0 ? neededPerDay / availablePerDay : 0 }
    /// Identities whose next session will come after their current one stops being usable, if nothing changes
    /// (computed only above 100%, else empty).
    public var late: [String]
}
