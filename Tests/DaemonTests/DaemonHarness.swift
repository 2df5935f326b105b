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

/// A running bunq-sandbox with its admin API.
struct Sandbox {
    let child: ChildProcess
    let base: String

    static func start(in dir: TemporaryDirectory, _ flags: [String]) async throws -> Sandbox {
        let child = try ChildProcess(Binaries.sandbox, ["--port", "0", "--rate-limits", "off"] + flags, log: dir.path("sandbox.log"))
        guard await child.waitFor(.seconds(20), { $0.contains("listening on ") }),
              let line = child.log.split(separator: "\n").first, line.hasPrefix("listening on ") else {
            _ = child.stop()
            throw HarnessError("bunq-sandbox did not start: \(child.log)")
        }
        return Sandbox(child: child, base: String(line.dropFirst("listening on ".count)))
    }

    @discardableResult
    func admin(_ method: String, _ path: String, _ body: String = "") throws -> [String: Any] {
        let output = try Command.check(["curl", "-s", "-X", method, base + "/_sandbox/" + path, "-d", body])
        return (try JSONSerialization.jsonObject(with: output.stdout) as? [String: Any]) ?? [:]
    }

    func stat(_ name: String) throws -> Int { try admin("GET", "stats")[name] as? Int ?? -1 }

    func newAPIKey() throws -> String {
        let output = try Command.check(["curl", "-s", "-X", "POST", base + "/v1/sandbox-user-person"])
        let json = try JSONSerialization.jsonObject(with: output.stdout) as? [String: Any]
        let item = (json?["Response"] as? [[String: Any]])?.first?["ApiKey"] as? [String: Any]
        guard let key = item?["api_key"] as? String else { throw HarnessError("no API key: \(output.stdoutText)") }
        return key
    }
}

struct HarnessError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Writes a daemon configuration for `sandbox` with an API-key identity `ops` and, optionally, a PSD2 provider.
func writeConfig(_ dir: TemporaryDirectory, sandbox: Sandbox, apiKey: String, provider: Bool,
                 firstSession: Int = 20, extra: String = "") throws -> String {
    _ = try dir.write("ops.key", apiKey + "\n")
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
          rate_limits: unlimited
          psd2_first_session_timeout: \(firstSession)
        socket:
          path: \(dir.path("socket"))
        state:
          directory: \(dir.path("state"))
        \(providerSection)api_keys:
          - {name: ops, key_file: \(dir.path("ops.key"))}
        \(extra)
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
