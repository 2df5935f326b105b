import Foundation

/// How the emulator behaves: where it listens, how long sessions live, how strict it is.
///
/// The defaults are bunq's own rules as strictly as the documents state them; each leniency is a flag a test
/// turns on for a reason.
public struct SandboxConfiguration: Sendable {
    /// What a dead (expired, deleted, killed) session's token gets. bunq has been seen answering all three.
    public enum DeadSessionAnswer: String, Sendable, CaseIterable {
        /// Always 401 "Insufficient authentication.".
        case status401 = "401"
        /// Always 403 "Insufficient authorisation.".
        case status403 = "403"
        /// In turn: 401 "Insufficient authentication.", 403 "Insufficient authentication.", 403 "Insufficient
        /// authorisation.".
        case mixed
    }

    /// Address to listen on. The admin API answers loopback clients only.
    public var host: String = "127.0.0.1"
    /// Port to listen on; 0 picks a free one.
    public var port: Int = 0
    /// Default `session_timeout` in seconds of every user (each user's own can be set through the admin API):
    /// sessions expire server-side this long after creation.
    public var sessionTimeout: Int = 604_800
    /// Lifetime in seconds of a PSD2 provider's first session (bunq: "The first session will last 1 hour").
    /// The user object still reports `sessionTimeout`, as bunq does.
    public var psd2FirstSessionTimeout: Int = 3_600
    /// Whether bunq's per-IP rate limits are enforced.
    public var rateLimits: Bool = true
    /// The status and wording a dead session's token gets.
    public var deadSessionAnswer: DeadSessionAnswer = .mixed
    /// Lifetime of an OAuth authorization code, in seconds.
    public var authorizationCodeLifetime: Int = 600
    /// Multiplies every rate-limit window (0.1: session-server 1 per 3 s), so tests live through bunq's limits in
    /// a tenth of the time.
    public var rateLimitScale: Double = 1
    /// Seconds the emulator's clock runs off the machine's: its `created` timestamps and its expiry checks.
    public var clockOffset: TimeInterval = 0
    /// Accept a reused `X-Bunq-Client-Request-Id` on the same installation (bunq answers an error).
    public var allowRequestIdReuse: Bool = false
    /// Accept requests without `User-Agent`, and signed requests without `Cache-Control` (bunq's swagger
    /// requires both).
    public var lenientHeaders: Bool = false
    /// When set, a request made in the last 30 s of a session extends it by this many seconds (bunq's contested
    /// rule: the swagger says 5 minutes at most, DESCRIPTION.md 30 minutes). Off by default.
    public var sessionExtensionSeconds: Int?
    /// Seconds an API key or PSD2 credential stays bindable (`device-server`) after it was issued; 0: forever.
    /// bunq: one hour (sandbox documentation; the quickstart says four).
    public var apiKeyBindWindow: Int = 3_600
    /// How long a callback target that did not answer 200 waits before the next of its 5 retries (bunq: a minute).
    public var callbackRetrySeconds: Double = 60

    /// The wall clock the emulator runs on, before `clockOffset`: the machine's, or a test's virtual one (so a test
    /// moves the emulator's sessions, expiries and rate-limit windows together with the daemon's clock).
    public var wallClock: @Sendable () -> Date = Date.init

    /// The emulator's clock.
    public var now: Date { wallClock().addingTimeInterval(clockOffset) }

    public init(host: String = "127.0.0.1", port: Int = 0, sessionTimeout: Int = 604_800,
                psd2FirstSessionTimeout: Int = 3_600, rateLimits: Bool = true, deadSessionAnswer: DeadSessionAnswer = .mixed,
                rateLimitScale: Double = 1, clockOffset: TimeInterval = 0) {
        self.rateLimitScale = rateLimitScale
        self.clockOffset = clockOffset
        self.host = host
        self.port = port
        self.sessionTimeout = sessionTimeout
        self.psd2FirstSessionTimeout = psd2FirstSessionTimeout
        self.rateLimits = rateLimits
        self.deadSessionAnswer = deadSessionAnswer
    }
}
