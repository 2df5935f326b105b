import Foundation
import HeapModule
import SessionKeeper
import TestThreads
import Testing

/// The planner and its session-server queue driven through simulated weeks at bunq's real limit (one session-server
/// call per 30 s per IP). Time is simulated, so a month of renewals runs in seconds and is deterministic.
@Suite(.ownThread) struct BudgetSimulationTests {
    static let week: TimeInterval = 7 * 86_400

    /// A bunq that answers each session-server call after `latency`, failing a fraction of them.
    struct World {
        var random = SeededRandom(seed: 7)
        var tokens = 0
        var failureRate: Double
        var latency: ClosedRange<Double>

        mutating func session(at now: Date, lifetime: TimeInterval) -> SessionInfo {
            tokens += 1
            return SessionInfo(token: "t\(tokens)", userId: 1, created: now, expiresAt: now.addingTimeInterval(lifetime))
        }
    }

    struct Trace {
        var grants: [(name: String, at: Date)] = []
        var failures = 0
        var grantedTooLate = 0
        var expiredAfterLive = 0
        var lateGrants: [String: Int] = [:]
    }

    /// Runs the scheduler's loop over `planner` from `start` until `end` (or until `stop` says so), answering each
    /// session-server call through `world`, and asking for random tokens all along.
    static func run(_ planner: inout RenewalPlanner<SeededRandom>, _ world: inout World, names: [String], lifetime: TimeInterval,
                    from start: Date, until end: Date, trace: inout Trace, stop: (Trace) -> Bool = { _ in false }) -> Date {
        var now = start
        var completion: (at: Date, name: String, succeeds: Bool)?
        var everLive = Set<String>()
        while now < end, !stop(trace) {
            let next = [completion?.at, planner.nextWakeup()].compactMap { $0 }.min() ?? end
            now = min(end, max(now, next))
            if let done = completion, done.at <= now {
                completion = nil
                if done.succeeds {
                    planner.succeeded(done.name, session: world.session(at: now, lifetime: lifetime), now: now)
                    everLive.insert(done.name)
                } else {
                    trace.failures += 1
                    planner.failed(done.name, error: RenewalError(.retryable, "HTTP 503"), now: now)
                }
            }
            planner.collectDue(now: now)
            for name in planner.startPreparations(limit: 8) { planner.prepared(name, now: now) }
            if let name = planner.grantSessionCall(now: now) {
                if case .unavailable(let state, _, _)? = planner.tokenGrant(name, now: now), state != .bootstrapping {
                    trace.lateGrants[name, default: 0] += 1
                }
                trace.grants.append((name, now))
                let latency = Double.random(in: world.latency, using: &world.random)
                let succeeds = Double.random(in: 0..<1, using: &world.random) >= world.failureRate
                completion = (now.addingTimeInterval(latency), name, succeeds)
            }
            // Clients ask for tokens all the time: every grant must outlive the safety margin.
            for _ in 0..<2 {
                let name = names[Int.random(in: 0..<names.count, using: &world.random)]
                switch planner.tokenGrant(name, now: now) {
                case .granted(_, _, let expiresAt, _, _)?:
                    if expiresAt.timeIntervalSince(now) < planner.policy.margin(lifetime: lifetime) { trace.grantedTooLate += 1 }
                case .unavailable(let state, _, _)?:
                    if state == .expired, everLive.contains(name) { trace.expiredAfterLive += 1 }
                case nil:
                    Issue.record("unknown context \(name)")
                }
            }
        }
        return now
    }

    @Test func twelveThousandWeekLongIdentitiesAt80PercentForAMonth() {
        let start = Date(timeIntervalSince1970: 1_700_000_000)
        // 12,000 identities of 1-week sessions need 12,000 / (0.75 × 7) = 2,286 sessions a day: 79% of the 2,880
        // one IP gets. (20,000 such identities need 3,810: 132%, two egress IPs' worth.)
        let count = 12_000
        var planner = RenewalPlanner(policy: RenewalPolicy(), budget: SessionServerBudget(), random: SeededRandom(seed: 42))
        var world = World(failureRate: 0.05, latency: 0.05...0.5)
        let names = (0..<count).map { "ctx-\($0)" }
        // Start-up: 11,000 restored with sessions of random age, 1,000 new ones (8 hours of the whole budget).
        for (index, name) in names.enumerated() {
            if index < 11_000 {
                let created = start.addingTimeInterval(-Double.random(in: 0...(0.8 * Self.week), using: &world.random))
                planner.add(name, session: SessionInfo(token: "r\(index)", userId: 1, created: created,
                                                       expiresAt: created.addingTimeInterval(Self.week)), generation: 1, now: start)
            } else {
                planner.add(name, session: nil, now: start)
            }
        }
        let status = planner.budgetStatus(now: start)
        #expect(status.availablePerDay == 2_880)
        #expect(status.utilisation > 0.7 && status.utilisation < 0.8, "11,000 with sessions: \(status.utilisation)")

        var trace = Trace()
        let end = Self.run(&planner, &world, names: names, lifetime: Self.week, from: start,
                           until: start.addingTimeInterval(30 * 86_400), trace: &trace)
        #expect(end >= start.addingTimeInterval(30 * 86_400))
        #expect(trace.grants.count > 60_000, "a month of renewals: \(trace.grants.count)")
        #expect(trace.failures > 1_000, "failures were met and retried: \(trace.failures)")
        var closest = TimeInterval.infinity
        for (previous, next) in zip(trace.grants, trace.grants.dropFirst()) {
            closest = min(closest, next.at.timeIntervalSince(previous.at))
        }
        #expect(closest >= 30, "every session-server call at least 30 s after the previous one: \(closest)")
        #expect(trace.grantedTooLate == 0, "no token handed out within its safety margin")
        #expect(trace.expiredAfterLive == 0, "no identity that was live ever lost its session")
        #expect(trace.lateGrants.isEmpty, "no renewal came after its session stopped being usable: \(trace.lateGrants.count)")
        let states = names.compactMap { planner.schedule($0, now: end)?.state }
        #expect(states.allSatisfy { $0 == .live || $0 == .renewing || $0 == .retrying }, "every identity live at the end")
        // New identities went live in their first hours, restored ones never waited for them.
        let firstGrantOfNew = Dictionary(trace.grants.filter { Int($0.name.dropFirst(4))! >= 11_000 }.map { ($0.name, $0.at) },
                                         uniquingKeysWith: min)
        #expect(firstGrantOfNew.count == 1_000)
        #expect(firstGrantOfNew.values.max()!.timeIntervalSince(start) < 12 * 3_600, "1,000 new identities live within 12 h")
    }

    /// Above 100% the queue still renews every identity, only later in its session's life: renewals come every
    /// 75% of a lifetime plus the queue's wait, so the wait settles where demand meets supply. At 120% that wait
    /// (27 h for 1-week sessions) fits in the 25% of a session left after its planned renewal, and nobody runs
    /// late; past about 133% it does not. Either way, the forecast names exactly who will.
    @Test(arguments: [(count: 18_144, percent: 120), (count: 21_168, percent: 140)])
    func aboveTheBudgetExactlyTheForecastIdentitiesRunLate(_ load: (count: Int, percent: Int)) {
        let start = Date(timeIntervalSince1970: 1_700_000_000)
        // N identities of 1-week sessions need N / (0.75 × 7) sessions a day against 2,880. No jitter and no
        // failures, so the outcome is exactly what the queue's order gives.
        let count = load.count
        var policy = RenewalPolicy()
        policy.jitterFraction = 0
        var planner = RenewalPlanner(policy: policy, budget: SessionServerBudget(), random: SeededRandom(seed: 43))
        var world = World(failureRate: 0, latency: 0...0)
        let names = (0..<count).map { "ctx-\($0)" }
        for (index, name) in names.enumerated() {
            let created = start.addingTimeInterval(-Double(index) / Double(count) * Self.week)
            planner.add(name, session: SessionInfo(token: "r\(index)", userId: 1, created: created,
                                                   expiresAt: created.addingTimeInterval(Self.week)), generation: 1, now: start)
        }
        let before = planner.budgetStatus(now: start)
        #expect(abs(before.utilisation - Double(load.percent) / 100) < 0.01, "\(load.percent)%: \(before.utilisation)")

        // Ten days in, the backlog has grown past what the sessions' slack absorbs.
        var trace = Trace()
        let t0 = Self.run(&planner, &world, names: names, lifetime: Self.week, from: start,
                          until: start.addingTimeInterval(10 * 86_400), trace: &trace)
        let status = planner.budgetStatus(now: t0, forecastHorizon: 86_400)
        #expect(status.utilisation > 1, "the warning's condition holds")
        let predicted = Set(status.late)
        if load.percent >= 140 {
            #expect(predicted.count > 100, "the forecast names identities that will run late: \(predicted.count)")
        } else {
            #expect(predicted.isEmpty, "at 120% the queue's wait fits in the sessions' slack: \(predicted.count)")
        }

        // Who the forecast covers: everything queued now or due within its horizon.
        let covered = Set(names.filter { name in
            guard let due = planner.pendingDeadline(name) else { return true }
            return due <= t0.addingTimeInterval(86_400)
        })
        #expect(predicted.isSubset(of: covered))
        var after = Trace()
        // Until every covered identity had its call: the grants so far are scanned once each, not at every step.
        var notYetGranted = covered, scanned = 0
        _ = Self.run(&planner, &world, names: names, lifetime: Self.week, from: t0,
                     until: t0.addingTimeInterval(5 * 86_400), trace: &after) { trace in
            while scanned < trace.grants.count {
                notYetGranted.remove(trace.grants[scanned].name)
                scanned += 1
            }
            return notYetGranted.isEmpty
        }
        var firstGrant: [String: Date] = [:]
        for grant in after.grants where firstGrant[grant.name] == nil { firstGrant[grant.name] = grant.at }
        #expect(Set(firstGrant.keys).isSuperset(of: covered), "every covered identity was renewed")
        let actual = Set(after.lateGrants.keys).intersection(covered)
        let summary = "late: \(actual.count), predicted \(predicted.count), unexpected \(actual.subtracting(predicted).count), "
            + "missed \(predicted.subtracting(actual).count)"
        #expect(actual == predicted, "\(summary)")
    }
}
