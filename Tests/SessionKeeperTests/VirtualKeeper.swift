import BunqSandbox
import CurlHTTP
import Foundation
import Logging
import SessionKeeper
import Synchronization
import TestSupport
import Testing
import Timekeeping

/// The whole keeper — store, scheduler, bunq client, rate limiter — against the emulator over real HTTP, both on
/// one manual clock: the keeper's monotonic clock, and a wall clock that follows it (the emulator's sessions,
/// expiries and rate-limit windows too). Hours of renewals at bunq's real limits run in seconds, deterministic in
/// time whatever the machine's load.
///
/// The clock moves only while the keeper is idle: its loop, its budget check and every renewal under way sleep on
/// the clock, so nothing still running could start a wait that the move would skip.
struct VirtualKeeper: Sendable {
    /// What sleeps on the clock while the keeper is idle: the scheduler's loop and the budget check.
    static let idleSleepers = 2

    let manual: ManualClock
    let wall: @Sendable () -> Date
    let keeper: Keeper
    /// The emulator's base URL.
    let url: String
    let http: HTTPClient
    /// The API-key identities, in order.
    let names: [String]
    let log: LogCapture

    /// Starts the emulator (`sandbox`, on the virtual wall clock) with `identities` API-key users and a keeper for
    /// them (`extra` YAML appended to its configuration; bunq's limits unless it says otherwise), runs `body`, stops.
    /// `prepare` runs once the emulator listens, before the keeper starts (faults to install, with the emulator's
    /// base URL and an HTTP client).
    static func run(identities: Int, sandbox: SandboxConfiguration, extra: String = "",
                    prepare: @escaping @Sendable (_ url: String, _ http: HTTPClient) async throws -> Void = { _, _ in },
                    _ body: @escaping @Sendable (VirtualKeeper) async throws -> Void) async throws {
        let manual = ManualClock()
        let base = Date()
        let wall: @Sendable () -> Date = {
            let elapsed = manual.now.offset.components
            return base.addingTimeInterval(Double(elapsed.seconds) + Double(elapsed.attoseconds) / 1e18)
        }
        var sandbox = sandbox
        sandbox.wallClock = wall
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let http = try HTTPClient()
        do {
            try await BunqSandbox.withRunning(sandbox) { url in
                let names = (1...identities).map { "id-\($0)" }
                var keys = ""
                for (index, name) in names.enumerated() {
                    // bunq's POST limit (5 per 3 s) holds on the emulator's virtual clock: 3 s pass every 5 users.
                    if index > 0, index % 5 == 0 { manual.advance(by: .seconds(3.2)) }
                    let key = try await newAPIKey(http, url)
                    keys += "  - {name: \(name), key_file: \(try dir.write("\(name).key", key + "\n"))}\n"
                }
                let file = try dir.write("config.yaml", """
                    bunq: {api_base_url: '\(url)/v1/', rate_limits: bunq}
                    state: {directory: \(dir.path("state"))}
                    api_keys:
                    \(keys)
                    \(extra)
                    """)
                try await prepare(url, http)
                let configuration = try KeeperConfiguration.load(file: file, environment: [:])
                let log = LogCapture()
                let keeper = try Keeper(configuration: configuration, psd2: nil,
                                        logger: Logger(label: "test", factory: { _ in log.handler }),
                                        clock: manual.erased, wallClock: wall)
                let deployment = VirtualKeeper(manual: manual, wall: wall, keeper: keeper, url: url, http: http,
                                               names: names, log: log)
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask { try await keeper.run() }
                    try await keeper.restored.fired()
                    do {
                        try await body(deployment)
                    } catch {
                        group.cancelAll()
                        throw error
                    }
                    group.cancelAll()
                }
            }
        } catch {
            await http.shutdown()
            throw error
        }
        await http.shutdown()
    }

    /// Waits until the keeper is idle (see the type's comment); false after 30 s of real time.
    func idle() async -> Bool {
        await eventually(within: .seconds(30), every: .milliseconds(1)) {
            manual.sleeping == Self.idleSleepers + (await keeper.registry.runningRenewals)
        }
    }

    /// Once the keeper is idle, moves the clock by `duration`.
    func advance(by duration: Duration) async throws {
        guard await idle() else {
            let running = await keeper.registry.runningRenewals
            throw VirtualTimeError("the keeper did not settle: \(manual.sleeping) sleep, \(running) renewals run")
        }
        manual.advance(by: duration)
    }

    /// Virtual time since the start.
    var elapsed: Duration { manual.now.offset }

    /// The token the keeper hands out for `name` now, if any.
    func grant(_ name: String) async -> (token: String, expiresAt: Date, generation: Int)? {
        guard case .granted(let token, _, let expiresAt, _, let generation)? = await keeper.tokenGrant(name) else { return nil }
        return (token, expiresAt, generation)
    }

    /// What bunq (the emulator) answers a `GET /v1/user` in `token`'s session: 200 while the session lives.
    func bunqStatus(of token: String) async throws -> Int {
        try await http.execute(HTTPRequest(url: "\(url)/v1/user", headers: [
            "X-Bunq-Client-Authentication": token, "User-Agent": "test", "Cache-Control": "no-cache",
        ])).status
    }

    /// A number from the emulator's `/_sandbox/stats` (`rate_limited`, `sessions_created`, …).
    func stat(_ key: String) async throws -> Int? {
        let reply = try await http.execute(HTTPRequest(url: "\(url)/_sandbox/stats"))
        return (try JSONSerialization.jsonObject(with: reply.body) as? [String: Any])?[key] as? Int
    }

    /// How many calls the emulator received to `endpoint` (`POST /v1/session-server`).
    func requests(_ endpoint: String) async throws -> Int {
        let reply = try await http.execute(HTTPRequest(url: "\(url)/_sandbox/stats"))
        let requests = (try JSONSerialization.jsonObject(with: reply.body) as? [String: Any])?["requests"] as? [String: Any]
        return requests?[endpoint] as? Int ?? 0
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

struct VirtualTimeError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Every message the keeper logs, with its level, for tests that check what was said.
final class LogCapture: Sendable {
    private let lines = Mutex<[(level: Logger.Level, message: String)]>([])

    var handler: Handler { Handler(capture: self) }

    func messages(_ level: Logger.Level? = nil) -> [String] {
        lines.withLock { lines in lines.filter { level == nil || $0.level == level }.map(\.message) }
    }

    struct Handler: LogHandler {
        let capture: LogCapture
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .info

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            capture.lines.withLock { $0.append((event.level, "\(event.message)")) }
        }
    }
}
