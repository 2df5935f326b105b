import ArgumentParser
import BunqSandbox
import Foundation

/// `bunq-sandbox`: a local emulator of the bunq API for tests, demos and development without network.
@main
struct BunqSandboxCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bunq-sandbox",
        abstract: "A local, faithful emulator of the bunq API (plain HTTP on loopback).",
        discussion: """
            The first line on stdout is `listening on http://HOST:PORT`. Point a client's API base URL at \
            http://HOST:PORT/v1/, OAuth authorize at /auth and token exchange at /v1/token. \
            Admin API for tests under /_sandbox/ (stats, faults, revoke, sessions/kill, users/session-timeout, \
            accounts, oauth/approve-as, draft-payments/{id}, callbacks).
            """)

    @Option(help: "Port to listen on; 0 picks a free one.")
    var port: Int = 8089

    @Option(help: "Address to listen on.")
    var host: String = "127.0.0.1"

    @Option(name: .customLong("session-timeout"), help: "Session lifetime in seconds (bunq's session_timeout).")
    var sessionTimeout: Int = 604_800

    @Option(name: .customLong("psd2-first-session-timeout"), help: "Lifetime in seconds of a PSD2 provider's first session.")
    var psd2FirstSessionTimeout: Int = 3_600

    @Option(name: .customLong("rate-limits"), help: "bunq: enforce bunq's rate limits; off: none.")
    var rateLimits: String = "bunq"

    @Option(name: .customLong("rate-limit-scale"), help: "Multiplies every rate-limit window (0.1: session-server 1 per 3 s).")
    var rateLimitScale: Double = 1

    @Option(name: .customLong("clock-offset"), help: "Seconds the emulator's clock runs off the machine's (created timestamps, expiry).")
    var clockOffset: Double = 0

    @Option(name: .customLong("expired-session-status"),
            help: "What a dead session's token gets: 401, 403, or mixed (401/403 with both wordings, in turn).")
    var expiredSessionStatus: String = "mixed"

    @Flag(name: .customLong("allow-request-id-reuse"), help: "Accept a reused X-Bunq-Client-Request-Id (bunq refuses it).")
    var allowRequestIdReuse = false

    @Flag(name: .customLong("lenient-headers"),
          help: "Accept requests without User-Agent, and signed ones without Cache-Control (bunq's swagger requires them).")
    var lenientHeaders = false

    @Option(name: .customLong("session-extension-seconds"),
            help: "A request in a session's last 30 s extends it by this many seconds (bunq's contested rule; off by default).")
    var sessionExtensionSeconds: Int?

    @Option(name: .customLong("api-key-bind-window"),
            help: "Seconds a new API key or PSD2 credential can be bound by device-server; 0: forever.")
    var apiKeyBindWindow: Int = 3_600

    @Option(name: .customLong("callback-retry-seconds"),
            help: "Seconds between the 5 retries of a callback whose target did not answer 200 (bunq: 60).")
    var callbackRetrySeconds: Double = 60

    func validate() throws {
        guard (0...65_535).contains(port) else { throw ValidationError("--port must be 0 to 65535, not \(port)") }
        guard sessionTimeout >= 1 else { throw ValidationError("--session-timeout must be at least 1 second") }
        guard psd2FirstSessionTimeout >= 1 else {
            throw ValidationError("--psd2-first-session-timeout must be at least 1 second")
        }
        guard ["bunq", "off"].contains(rateLimits) else {
            throw ValidationError("--rate-limits must be bunq or off, not '\(rateLimits)'")
        }
        guard rateLimitScale >= 0.001, rateLimitScale <= 1_000 else {
            throw ValidationError("--rate-limit-scale must be from 0.001 to 1000, not \(rateLimitScale)")
        }
        guard abs(clockOffset) <= 86_400 * 365 else { throw ValidationError("--clock-offset must be within a year") }
        guard SandboxConfiguration.DeadSessionAnswer(rawValue: expiredSessionStatus) != nil else {
            throw ValidationError("--expired-session-status must be 401, 403 or mixed, not '\(expiredSessionStatus)'")
        }
        if let sessionExtensionSeconds, !(1...86_400).contains(sessionExtensionSeconds) {
            throw ValidationError("--session-extension-seconds must be 1 to 86400, not \(sessionExtensionSeconds)")
        }
        guard apiKeyBindWindow >= 0 else { throw ValidationError("--api-key-bind-window must be 0 or more seconds") }
        guard callbackRetrySeconds >= 0.01, callbackRetrySeconds <= 3_600 else {
            throw ValidationError("--callback-retry-seconds must be from 0.01 to 3600, not \(callbackRetrySeconds)")
        }
    }

    func run() async throws {
        // A parent may have started us with SIGTERM or SIGINT ignored (dispositions survive exec); a server that
        // cannot be stopped is a bug, so take the defaults back.
        signal(SIGTERM, SIG_DFL)
        signal(SIGINT, SIG_DFL)
        var configuration = SandboxConfiguration(
            host: host, port: port, sessionTimeout: sessionTimeout, psd2FirstSessionTimeout: psd2FirstSessionTimeout,
            rateLimits: rateLimits == "bunq",
            deadSessionAnswer: SandboxConfiguration.DeadSessionAnswer(rawValue: expiredSessionStatus) ?? .mixed,
            rateLimitScale: rateLimitScale, clockOffset: clockOffset)
        configuration.allowRequestIdReuse = allowRequestIdReuse
        configuration.lenientHeaders = lenientHeaders
        configuration.sessionExtensionSeconds = sessionExtensionSeconds
        configuration.apiKeyBindWindow = apiKeyBindWindow
        configuration.callbackRetrySeconds = callbackRetrySeconds
        let sandbox = BunqSandbox(configuration: configuration)
        try await sandbox.run { port in
            // Unbuffered, so a parent reading our stdout sees the line at once.
            FileHandle.standardOutput.write(Data("listening on http://\(host):\(port)\n".utf8))
        }
    }
}
