/// The session-server budget's warnings as its utilisation moves: one when it rises above 80% (once per
/// crossing), one above 100% naming how many identities will run late (again when that number changes), and a
/// notice when it is back below 80%. Pure: it is fed each check's status and says what to log.
struct BudgetWatch: Sendable {
    enum Level: Int, Comparable, Sendable {
        case fine, above80, exceeded
        static func < (lhs: Level, rhs: Level) -> Bool { lhs.rawValue < rhs.rawValue }
    }

    enum Message: Equatable, Sendable {
        case exceeded(late: Int)
        case above80
        case backBelow80
    }

    private(set) var level = Level.fine
    private var lastLate = -1
    private var rounds = 0

    /// Whether the next check should forecast who runs late (it walks every renewal due within a day): always
    /// below 100%, where the forecast decides whether it is crossed, and every sixth check above it.
    var forecastNext: Bool { level < .exceeded || rounds % 6 == 0 }

    /// Takes one check's status; what to log, if anything. Unlimited (`rate_limits: unlimited`): nothing.
    mutating func observe(_ status: BudgetStatus) -> Message? {
        rounds += 1
        guard status.availablePerDay.isFinite else { return nil }
        let now: Level = status.utilisation > 1 ? .exceeded : status.utilisation > 0.8 ? .above80 : .fine
        var message: Message?
        if now == .exceeded, now > level || status.late.count != lastLate {
            message = .exceeded(late: status.late.count)
            lastLate = status.late.count
        } else if now == .above80, level == .fine {
            message = .above80
        } else if now == .fine, level > .fine {
            message = .backBelow80
        }
        if now < .exceeded { lastLate = -1 }
        level = now
        return message
    }
}

extension BudgetWatch {
    /// Checks at once and then every `interval` on `clock` until cancelled: `status` gives each check's status
    /// (with the forecast when asked for), `report` is told every message with the status it is about.
    mutating func run<C: Clock>(every interval: Duration, on clock: C,
                                status: (_ forecast: Bool) async -> BudgetStatus,
                                report: (Message, BudgetStatus) -> Void) async where C.Duration == Duration {
        await every(interval, on: clock) {
            let current = await status(forecastNext)
            if let message = observe(current) { report(message, current) }
        }
    }
}
