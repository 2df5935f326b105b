import BunqSandbox
import CurlHTTP
import Foundation
import Logging
import SessionKeeper
import TestSupport
import TestThreads
import Testing
import Timekeeping

/// The whole keeper — store, scheduler, bunq client, rate limiter — against the emulator over real HTTP, with one
/// manual clock under both: four weeks of one-day sessions in seconds, at bunq's real limits (scale 1).
@Suite(.ownThread) struct KeeperVirtualTimeTests {
    /// What sleeps on the clock while the keeper is idle: the scheduler's loop and the budget check.
    static let idleSleepers = 2

    @Test func fourWeeksOfDailySessionsAtBunqsLimitsNeverHandOutADeadToken() async throws {
        let manual = ManualClock()
        let clock = manual.erased
        let base = Date()
        let wall: @Sendable () -> Date = { base.addingTimeInterval(Double(manual.now.offset.components.seconds)) }
        var sandbox = SandboxConfiguration(sessionTimeout: 86_400, rateLimits: true)
        sandbox.wallClock = wall
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let http = try HTTPClient()

        try await BunqSandbox.withRunning(sandbox) { url in
            let names = ["a", "b", "c"]
            var keys = ""
            for name in names {
                let key = try await Self.newAPIKey(http, url)
                keys += "  - {name: \(name), key_file: \(try dir.write("\(name).key", key + "\n"))}\n"
            }
            let file = try dir.write("config.yaml", """
                bunq: {api_base_url: '\(url)/v1/', rate_limits: bunq}
                state: {directory: \(dir.path("state"))}
                api_keys:
                \(keys)
                """)
            let configuration = try KeeperConfiguration.load(file: file, environment: [:])
            let keeper = try Keeper(configuration: configuration, psd2: nil,
                                    logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }),
                                    clock: clock, wallClock: wall)
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await keeper.run() }
                try await keeper.restored.fired()

                var tokens: [String: Set<String>] = [:]
                var deadTokens: [String] = []
                var refused: [String] = []
                let step = Duration.seconds(20 * 60)
                let days = 28
                for index in 0..<(days * 72) {
                    guard await Self.idle(keeper, manual) else {
                        let running = await keeper.scheduler.runningRenewals
                        Issue.record("the keeper did not settle at step \(index): \(manual.sleeping) sleep, \(running) renewals run")
                        break
                    }
                    for name in names {
                        guard case .granted(let token, _, let expiresAt, _, _)? = await keeper.tokenGrant(name) else { continue }
                        tokens[name, default: []].insert(token)
                        // bunq's own expiry (the emulator's, on the same clock): a minute's margin at least.
                        if expiresAt.timeIntervalSince(wall()) < 60 { deadTokens.append("\(name) at step \(index)") }
                        // Once a virtual day, bunq itself is asked whether the token is good.
                        if index % 72 == 71 {
                            let reply = try await http.execute(HTTPRequest(url: "\(url)/v1/user", headers: [
                                "X-Bunq-Client-Authentication": token, "User-Agent": "test", "Cache-Control": "no-cache",
                            ]))
                            if reply.status != 200 { refused.append("\(name) on day \(index / 72 + 1): \(reply.status)") }
                        }
                    }
                    manual.advance(by: step)
                }
                group.cancelAll()

                #expect(deadTokens.isEmpty, "no token handed out within a minute of bunq's expiry: \(deadTokens)")
                #expect(refused.isEmpty, "bunq accepted every token handed out: \(refused)")
                // 28 days of one-day sessions renewed at 65–85% of their life: 33 to 44 sessions each.
                for name in names {
                    #expect((33...45).contains(tokens[name]?.count ?? 0), "\(name): \(tokens[name]?.count ?? 0) sessions")
                }
                let stats = try await http.execute(HTTPRequest(url: "\(url)/_sandbox/stats"))
                let json = try #require(try JSONSerialization.jsonObject(with: stats.body) as? [String: Any])
                #expect(json["rate_limited"] as? Int == 0, "never a 429 from bunq: \(json)")
            }
        }
        await http.shutdown()
    }

    /// Idle: every renewal under way and the loop sleep on the manual clock (nothing runs that could still
    /// start a wait), so advancing it is what happens next.
    static func idle(_ keeper: Keeper, _ clock: ManualClock) async -> Bool {
        await eventually(within: .seconds(30), every: .milliseconds(1)) {
            clock.sleeping == idleSleepers + (await keeper.scheduler.runningRenewals)
        }
    }

    /// A new emulator user's API key.
    static func newAPIKey(_ http: HTTPClient, _ url: String) async throws -> String {
        let reply = try await http.execute(HTTPRequest(method: "POST", url: "\(url)/v1/sandbox-user-person",
                                                       headers: ["User-Agent": "test", "Cache-Control": "no-cache"]))
        let json = try JSONSerialization.jsonObject(with: reply.body) as? [String: Any]
        let item = (json?["Response"] as? [[String: Any]])?.first?["ApiKey"] as? [String: Any]
        return try #require(item?["api_key"] as? String, "no API key: \(String(decoding: reply.body, as: UTF8.self))")
    }
}
