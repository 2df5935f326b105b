import Foundation
import Synchronization
import Testing
import TestSupport

/// The repository's built binaries.
enum Binaries {
    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent(".build/debug")
    static var sandbox: String { directory.appendingPathComponent("bunq-sandbox").path }
    static var daemon: String { directory.appendingPathComponent("bunq-sessiond").path }
}

/// A child process whose stdout and stderr go to a file the test can read while it runs.
final class ChildProcess: Sendable {
    let process: Process
    let logPath: String

    /// `environment` is added to this process's own.
    init(_ executable: String, _ arguments: [String], log: String, environment: [String: String] = [:]) throws {
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        if !environment.isEmpty {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        process.standardOutput = handle
        process.standardError = handle
        process.standardInput = FileHandle.nullDevice
        try process.run()
        self.process = process
        self.logPath = log
    }

    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// Waits until the log satisfies `condition`, for at most `timeout`; returns whether it did.
    func waitFor(_ timeout: Duration, _ condition: (String) -> Bool) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if condition(log) { return true }
            if !process.isRunning { return condition(log) }
            try? await Task.sleep(for: .milliseconds(200))
        }
        return condition(log)
    }

    /// `waitFor` on this thread, without Swift concurrency: for a test whose timing must not depend on the shared
    /// cooperative pool, which other tests' blocking calls can hold up for seconds.
    func waitForBlocking(_ timeout: TimeInterval, _ condition: (String) -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if condition(log) { return true }
            if !process.isRunning { return condition(log) }
            usleep(50_000)
        }
        return condition(log)
    }

    /// Sends `signal`, waits up to 20 s for the exit, then SIGKILLs: no test leaves a process behind.
    func stop(signal: Int32 = SIGTERM) -> Int32 {
        if process.isRunning { kill(process.processIdentifier, signal) }
        let deadline = Date().addingTimeInterval(20)
        while process.isRunning, Date() < deadline { usleep(50_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        return process.terminationStatus
    }
}

/// bunq's rate limits in a test, on the sandbox and the daemon alike: bunq's own, bunq's with every window
/// multiplied by a scale (0.1: session-server one call per 3 s), so a test lives through them in less time, or off.
enum Limits {
    case bunq
    case scaled(Double)
    case off

    var sandboxFlags: [String] {
        switch self {
        case .bunq: []
        case .scaled(let scale): ["--rate-limit-scale", "\(scale)"]
        case .off: ["--rate-limits", "off"]
        }
    }

    var configKeys: String {
        switch self {
        case .bunq: "rate_limits: bunq"
        case .scaled(let scale): "rate_limits: bunq\n  rate_limit_scale: \(scale)"
        case .off: "rate_limits: unlimited"
        }
    }
}

/// A running bunq-sandbox with its admin API.
struct Sandbox {
    let child: ChildProcess
    let base: String
    let limits: Limits

    /// Starts the emulator with bunq's limits scaled to a tenth unless a test says otherwise.
    static func start(in dir: TemporaryDirectory, _ flags: [String], limits: Limits = .scaled(0.1)) async throws -> Sandbox {
        let child = try ChildProcess(Binaries.sandbox, ["--port", "0"] + limits.sandboxFlags + flags, log: dir.path("sandbox.log"))
        guard await child.waitFor(.seconds(20), { $0.contains("listening on ") }),
              let line = child.log.split(separator: "\n").first, line.hasPrefix("listening on ") else {
            _ = child.stop()
            throw HarnessError("bunq-sandbox did not start: \(child.log)")
        }
        return Sandbox(child: child, base: String(line.dropFirst("listening on ".count)), limits: limits)
    }

    @discardableResult
    func admin(_ method: String, _ path: String, _ body: String = "") throws -> [String: Any] {
        let output = try Command.check(["curl", "-s", "-X", method, base + "/_sandbox/" + path, "-d", body])
        return (try JSONSerialization.jsonObject(with: output.stdout) as? [String: Any]) ?? [:]
    }

    func stat(_ name: String) throws -> Int { try admin("GET", "stats")[name] as? Int ?? -1 }

    /// How often bunq's API was called at `endpoint` (a route name such as `POST /v1/session-server`).
    func requests(_ endpoint: String) throws -> Int {
        (try admin("GET", "stats")["requests"] as? [String: Any])?[endpoint] as? Int ?? 0
    }

    /// The HTTP status bunq gives `GET /v1/user` with this session token: 200 while the session lives. A 429 (the
    /// sandbox's GET limit, 3 per 3 s scaled, which a test trying several tokens in a row can reach) says nothing
    /// about the token: that call is paced and made again.
    func userStatus(token: String) throws -> Int {
        var status = -1
        for _ in 0..<40 {
            let output = try Command.check(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                            "-H", "X-Bunq-Client-Authentication: \(token)", base + "/v1/user"])
            status = Int(output.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
            guard status == 429 else { return status }
            usleep(100_000)
        }
        return status
    }

    /// A new sandbox user's API key; paced by bunq's POST limit (5 per 3 s, scaled), waiting out a 429.
    func newAPIKey() throws -> String {
        var text = ""
        for _ in 0..<40 {
            let output = try Command.check(["curl", "-s", "-X", "POST", base + "/v1/sandbox-user-person"])
            text = output.stdoutText
            let json = try JSONSerialization.jsonObject(with: output.stdout) as? [String: Any]
            let item = (json?["Response"] as? [[String: Any]])?.first?["ApiKey"] as? [String: Any]
            if let key = item?["api_key"] as? String { return key }
            guard text.contains("Too many requests") else { break }
            usleep(250_000)
        }
        throw HarnessError("no API key: \(text)")
    }
}

struct HarnessError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// An operator's master key for a store several daemons share: 32 random bytes in hex, in `dir`'s `name`
/// (mode 0600); its path.
func writeMasterKey(_ dir: TemporaryDirectory, _ name: String = "master.key") throws -> String {
    let keyFile = try dir.write(name, (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined())
    chmod(keyFile, 0o600)
    return keyFile
}

/// `config` (as `writeConfig` wrote it, its state in `dir`'s `state`) with the state in `server`'s PostgreSQL
/// instead, sealed with `keyFile`; the state directory (which then holds only the daemon's lock) is
/// `stateDirectory`, `dir`'s `state` unless given.
func onPostgreSQL(_ config: String, dir: TemporaryDirectory, server: PostgresServer, keyFile: String,
                  stateDirectory: String? = nil) -> String {
    config.replacingOccurrences(of: "state:\n  directory: \(dir.path("state"))\n", with: """
        state:
          directory: \(stateDirectory ?? dir.path("state"))
          backend: postgresql
          master_key_file: \(keyFile)
          postgresql: {url: '\(server.url)', password_file: \(server.passwordFile)}

        """)
}

/// Writes a daemon configuration for `sandbox` with an API-key identity `ops` and, optionally, a PSD2 provider.
/// `moreKeys` adds API-key identities `id-1`, `id-2`, …
func writeConfig(_ dir: TemporaryDirectory, sandbox: Sandbox, apiKey: String, provider: Bool,
                 firstSession: Int = 20, extra: String = "", moreKeys: [String] = []) throws -> String {
    _ = try dir.write("ops.key", apiKey + "\n")
    var keys = ""
    for (index, key) in moreKeys.enumerated() {
        _ = try dir.write("id-\(index + 1).key", key + "\n")
        keys += "  - {name: id-\(index + 1), key_file: \(dir.path("id-\(index + 1).key"))}\n"
    }
    var providerSection = ""
    if provider {
        try Command.check(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-keyout", dir.path("eidas-key.pem"), "-out",
                           dir.path("eidas-cert.pem"), "-days", "365", "-nodes", "-subj", "/CN=E2E Test PISP AISP/C=NL"])
        providerSection = """
            provider:
              certificate: \(dir.path("eidas-cert.pem"))
              private_key: \(dir.path("eidas-key.pem"))
              oauth_redirect_uris: [https://example.com/bunq/callback]

            """
    }
    return try dir.write("config.yaml", """
        bunq:
          environment: sandbox
          api_base_url: \(sandbox.base)/v1/
          oauth_authorize_url: \(sandbox.base)/auth
          oauth_token_url: \(sandbox.base)/v1/token
          \(sandbox.limits.configKeys)
          psd2_first_session_timeout: \(firstSession)
        socket:
          path: \(dir.path("socket"))
        state:
          directory: \(dir.path("state"))
        \(providerSection)api_keys:
          - {name: ops, key_file: \(dir.path("ops.key"))}
        \(keys)\(extra)
        """)
}

/// One "session renewed" log line.
struct Rotation {
    let context: String
    let at: Date
    let expiresAt: Date
    let generation: Int
}

/// The renewals in a daemon log, in order.
func rotations(in log: String) -> [Rotation] {
    let iso = ISO8601DateFormatter()
    let stamp = ISO8601DateFormatter()
    stamp.formatOptions = [.withInternetDateTime]
    return log.split(separator: "\n").compactMap { line in
        guard line.contains("session renewed") else { return nil }
        let fields = Dictionary(line.split(separator: " ").compactMap { part -> (String, String)? in
            let pair = part.split(separator: "=", maxSplits: 1)
            return pair.count == 2 ? (String(pair[0]), String(pair[1])) : nil
        }, uniquingKeysWith: { a, _ in a })
        let timestamp = String(line.prefix { $0 != " " }).replacingOccurrences(of: "+0000", with: "Z")
        guard let context = fields["bunq.context"], let expires = fields["bunq.expires_at"].flatMap(iso.date),
              let at = stamp.date(from: timestamp), let generation = fields["bunq.generation"].flatMap({ Int($0) })
        else { return nil }
        return Rotation(context: context, at: at, expiresAt: expires, generation: generation)
    }
}

/// Each context renewed before its previous session expired: no gap without a valid session.
func expectNoGaps(_ rotations: [Rotation], sourceLocation: SourceLocation = #_sourceLocation) {
    for context in Set(rotations.map(\.context)) {
        let mine = rotations.filter { $0.context == context }
        for (previous, next) in zip(mine, mine.dropFirst()) {
            #expect(next.at < previous.expiresAt,
                    "\(context): renewed at \(next.at), but the previous session expired at \(previous.expiresAt)",
                    sourceLocation: sourceLocation)
        }
    }
}
