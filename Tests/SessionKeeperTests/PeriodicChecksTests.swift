import Foundation
@testable import SessionKeeper
import Synchronization
import Testing
import TestSupport
import TestThreads
import Timekeeping

/// The daemon's periodic checks on a manual clock: weeks of daily certificate checks and hours of budget checks
/// in milliseconds, each tick awaited (the check sleeps on the clock) before the clock moves.
@Suite(.ownThread) struct PeriodicChecksTests {
    /// What a check reported, shared with the test's task.
    final class Recorded<Element: Sendable>: Sendable {
        private let items = Mutex<[Element]>([])
        var all: [Element] { items.withLock { $0 } }
        /// Appends `item`; how many there are now.
        @discardableResult func append(_ item: Element) -> Int { items.withLock { $0.append(item); return $0.count } }
    }

    /// Moves `clock` one `interval` at a time, `ticks` times, each time once the check sleeps again.
    func tick(_ clock: ManualClock, _ interval: Duration, _ ticks: Int) async -> Bool {
        for _ in 0..<ticks {
            guard await eventually(within: .seconds(30), every: .milliseconds(1), { clock.sleeping == 1 }) else { return false }
            clock.advance(by: interval)
        }
        return await eventually(within: .seconds(30), every: .milliseconds(1), { clock.sleeping == 1 })
    }

    @Test func theCertificateWarnsDailyInItsLastThirtyDaysThenSaysItExpired() async throws {
        let clock = ManualClock()
        let start = Date(timeIntervalSince1970: 1_800_000_000)
        let wall: @Sendable () -> Date = { start.addingTimeInterval(Double(clock.now.offset.components.seconds)) }
        let findings = Recorded<CertificateWatch.Finding>()
        let day = Duration.seconds(86_400)
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                await CertificateWatch(notAfter: start.addingTimeInterval(40 * 86_400))
                    .run(every: day, on: clock, wall: wall) { finding in findings.append(finding) }
            }
            #expect(await tick(clock, day, 41), "a check a day for 41 days")
            group.cancelAll()
        }
        // Day 0 (the check at start) to day 10: 40 to 30 days left, nothing; days 11-39 a warning each; then errors.
        let expected: [CertificateWatch.Finding] = (11...39).map { .expiring(daysLeft: 40 - $0) } + [.expired(daysLeft: 0), .expired(daysLeft: -1)]
        #expect(findings.all == expected)
    }

    @Test func budgetWarningsComeOncePerCrossingAndTheForecastEverySixthCheckAbove100Percent() async throws {
        let clock = ManualClock()
        func status(_ utilisation: Double, late: Int = 0) -> BudgetStatus {
            BudgetStatus(neededPerDay: utilisation * 2_880, availablePerDay: 2_880,
                         late: (0..<late).map { "ctx-\($0)" })
        }
        let script: [BudgetStatus] = [status(0.5), status(0.85), status(0.9), status(1.2, late: 3), status(1.2, late: 3)]
            + Array(repeating: status(1.3, late: 5), count: 7)
            + [status(0.7), BudgetStatus(neededPerDay: 10, availablePerDay: .infinity, late: [])]
        let asked = Recorded<Bool>()
        let logged = Recorded<BudgetWatch.Message>()
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                var watch = BudgetWatch()
                await watch.run(every: .seconds(10), on: clock, status: { forecast in
                    script[min(asked.append(forecast) - 1, script.count - 1)]
                }, report: { message, _ in logged.append(message) })
            }
            #expect(await tick(clock, .seconds(10), script.count - 1))
            group.cancelAll()
        }
        #expect(logged.all == [.above80, .exceeded(late: 3), .exceeded(late: 5), .backBelow80],
                "one line per crossing, and again when the number running late changes")
        // Below 100% every check forecasts; above it (checks 5 to 12) only every sixth.
        let forecasts = asked.all
        #expect(forecasts.count == script.count)
        #expect(Array(forecasts[0..<4]) == [true, true, true, true])
        #expect(Array(forecasts[4..<12]) == [false, false, true, false, false, false, false, false], "\(forecasts)")
    }
}
