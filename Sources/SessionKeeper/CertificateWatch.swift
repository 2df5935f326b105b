import Foundation

/// What the daily certificate check says about the provider's eIDAS certificate: a warning within 30 days of its
/// end, an error once it has ended (bunq refuses new PSD2 sessions then; the running ones last until they
/// expire), nothing before. Pure: the time is the caller's.
struct CertificateWatch: Sendable {
    enum Finding: Equatable, Sendable {
        case expiring(daysLeft: Int)
        /// `daysLeft` is zero or negative: the days since the end.
        case expired(daysLeft: Int)
    }

    let notAfter: Date
    /// How close to the end a warning starts.
    var warningDays = 30

    func check(at now: Date) -> Finding? {
        let daysLeft = Int(notAfter.timeIntervalSince(now) / 86_400)
        if notAfter <= now { return .expired(daysLeft: daysLeft) }
        return daysLeft < warningDays ? .expiring(daysLeft: daysLeft) : nil
    }
}

extension CertificateWatch {
    /// Checks at once and then every `interval` on `clock` (daily in the daemon) until cancelled, reading the
    /// wall clock through `wall` at each check, and reports what each check found.
    func run<C: Clock>(every interval: Duration, on clock: C, wall: @Sendable () -> Date,
                       report: (Finding) -> Void) async where C.Duration == Duration {
        await every(interval, on: clock) {
            if let finding = check(at: wall()) { report(finding) }
        }
    }
}
