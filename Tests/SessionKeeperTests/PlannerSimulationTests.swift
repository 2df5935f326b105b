import Foundation
import HeapModule
import SessionKeeper
import Testing

/// The planner driven through simulated days: many identities, random upstream failures, a tight limit on
/// renewal starts. Time is simulated, so the run is deterministic and fast.
@Suite struct PlannerSimulationTests {
    struct Completion: Comparable {
        let at: Date
        let name: String
        let succeeds: Bool
        static func < (lhs: Completion, rhs: Completion) -> Bool { lhs.at < rhs.at }
    }

    @Test func tenThousandIdentitiesUnderFailuresAndATightRateLimit() {
        let start = Date(timeIntervalSince1970: 1_700_000_000)
        let lifetime: TimeInterval = 3_600
        let identities = 10_000
        let policy = RenewalPolicy()
        var planner = RenewalPlanner(policy: policy, random: SeededRandom(seed: 42))
        var world = SeededRandom(seed: 7)
        var tokenCounter = 0
        func newSession(_ now: Date) -> SessionInfo {
            tokenCounter += 1
            // bunq's clock may be a little behind or ahead of ours.
            let created = now.addingTimeInterval(Double.random(in: -2...2, using: &world))
            return SessionInfo(token: "t\(tokenCounter)", userId: 1, created: created,
                               expiresAt: created.addingTimeInterval(lifetime))
        }
        // Start-up: half restored with sessions of random age, half bootstrapping.
        var expiries: [String: Date] = [:]
        for index in 0..<identities {
            let name = "ctx-\(index)"
            if index % 2 == 0 {
                let session = newSession(start.addingTimeInterval(-Double.random(in: 0...3_500, using: &world)))
                expiries[name] = session.expiresAt
                planner.add(name, session: session, now: start)
            } else {
                planner.add(name, session: nil, now: start)
            }
        }

        let end = start.addingTimeInterval(6 * 3_600)
        let startInterval: TimeInterval = 0.05  // at most 20 renewal starts a second
        let capacity = 64
        var nextSlot = start
        var completions = Heap<Completion>()
        var now = start
        var renewals = 0, failures = 0, takes = 0, edfChecks = 0
        var grantedTooLate = 0, zeroSleeps = 0, expiredAfterLive = 0
        var fractions: [Double] = []
        var everLive = Set<String>()

        while now < end {
            // Next event: a completion, or a due deadline once a start slot is free.
            let deadline = planner.nextDeadline().map { max($0, nextSlot) }
            let candidates = [completions.min?.at, planner.inFlightCount < capacity ? deadline : nil].compactMap { $0 }
            guard let next = candidates.min() else { break }
            now = max(now, next)

            while let done = completions.min, done.at <= now {
                completions.removeMin()
                renewals += 1
                if done.succeeds {
                    let session = newSession(now)
                    planner.succeeded(done.name, session: session, now: now)
                    expiries[done.name] = session.expiresAt
                    everLive.insert(done.name)
                    if let schedule = planner.schedule(done.name, now: now), let renewAt = schedule.renewAt {
                        fractions.append(renewAt.timeIntervalSince(session.created) / lifetime)
                    }
                } else {
                    failures += 1
                    let kind: RenewalError.Kind = .retryable
                    planner.failed(done.name, error: RenewalError(kind, "HTTP 500"), now: now)
                    let retryAt = planner.schedule(done.name, now: now)?.nextRetryAt ?? now
                    if retryAt.timeIntervalSince(now) < 0.5 { zeroSleeps += 1 }
                }
            }

            if now >= nextSlot, planner.inFlightCount < capacity {
                // EDF: what is taken is due no later than anything else pending (checked on a sample).
                let sample = takes % 997 == 0
                let pendingBefore: [(String, Date)] = sample
                    ? planner.contextNames.compactMap { name in planner.pendingDeadline(name).map { (name, $0) } } : []
                for name in planner.takeDue(now: now, limit: 1) {
                    takes += 1
                    nextSlot = now.addingTimeInterval(startInterval)
                    if sample, let mine = pendingBefore.first(where: { $0.0 == name })?.1 {
                        edfChecks += 1
                        #expect(pendingBefore.allSatisfy { $0.1 >= mine }, "EDF violated at \(now)")
                    }
                    let latency = Double.random(in: 0.05...2, using: &world)
                    completions.insert(Completion(at: now.addingTimeInterval(latency), name: name,
                                                  succeeds: Double.random(in: 0..<1, using: &world) >= 0.3))
                }
            }

            // Clients ask for tokens all the time: every grant must outlive the safety margin.
            for _ in 0..<3 {
                let name = "ctx-\(Int.random(in: 0..<identities, using: &world))"
                switch planner.lease(name, now: now) {
                case .granted(_, _, let expiresAt, _, _)?:
                    if expiresAt.timeIntervalSince(now) < policy.margin(lifetime: lifetime) { grantedTooLate += 1 }
                case .unavailable(let state, _, _)?:
                    if state == .expired, everLive.contains(name) { expiredAfterLive += 1 }
                case nil:
                    Issue.record("unknown context \(name)")
                }
            }
        }

        #expect(renewals > 60_000, "the simulation ran: \(renewals) renewals")
        #expect(Double(failures) / Double(renewals) > 0.25)
        #expect(grantedTooLate == 0, "no token handed out within its safety margin")
        #expect(zeroSleeps == 0, "every failure waits at least half the backoff base")
        #expect(expiredAfterLive == 0, "no live identity lost its session despite 30% failures")
        #expect(edfChecks > 50)
        let mean = fractions.reduce(0, +) / Double(fractions.count)
        let deviation = (fractions.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(fractions.count)).squareRoot()
        #expect(fractions.min()! >= 0.649 && fractions.max()! <= 0.851, "renewals at 65% to 85% of the lifetime")
        #expect(abs(mean - 0.75) < 0.01 && deviation > 0.05, "jitter spreads renewals: mean \(mean), sd \(deviation)")
        // Every identity is live at the end.
        let states = (0..<identities).compactMap { planner.schedule("ctx-\($0)", now: end)?.state }
        #expect(states.filter { $0 == .expired || $0 == .bootstrapping }.count == 0)
    }
}
