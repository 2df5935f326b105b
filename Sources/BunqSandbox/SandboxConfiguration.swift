import Foundation

/// How the emulator behaves: where it listens, how long sessions live, whether bunq's rate limits apply.
public struct SandboxConfiguration: Sendable {
    /// Address to listen on. The admin API answers loopback clients only.
    public var host: String = "127.0.0.1"
    /// Port to listen on; 0 picks a free one.
    public var port: Int = 0
    /// `session_timeout` in seconds of every user: sessions expire server-side this long after creation.
    public var sessionTimeout: Int = 604_800
    /// Lifetime in seconds of a PSD2 provider's first session (bunq: "The first session will last 1 hour").
    /// The user object still reports `sessionTimeout`, as bunq does.
    public var psd2FirstSessionTimeout: Int = 3_600
    /// Whether bunq's per-IP rate limits are enforced.
    public var rateLimits: Bool = true
    /// The status an expired or deleted session's token gets: 401 "Insufficient authentication." or 403
    /// "Insufficient authorisation.", both seen from bunq.
    public var expiredSessionStatus: Int = 401
    /// Lifetime of an OAuth authorization code, in seconds.
    public var authorizationCodeLifetime: Int = 600
    /// Multiplies every rate-limit window (0.1: session-server 1 per 3 s), so tests live through bunq's limits in
    /// a tenth of the time.
    public var rateLimitScale: Double = 1
    /// Seconds the emulator's clock runs off the machine's: its `created` timestamps and its expiry checks.
    public var clockOffset: TimeInterval = 0

    /// The emulator's clock.
    public var now: Date { Date().addingTimeInterval(clockOffset) }

    public init(host: String = "127.0.0.1", port: Int = 0, sessionTimeout: Int = 604_800,
                psd2FirstSessionTimeout: Int = 3_600, rateLimits: Bool = true, expiredSessionStatus: Int = 401,
                rateLimitScale: Double = 1, clockOffset: TimeInterval = 0) {
        self.rateLimitScale = rateLimitScale
        self.clockOffset = clockOffset
        self.host = host
        self.port = port
        self.sessionTimeout = sessionTimeout
        self.psd2FirstSessionTimeout = psd2FirstSessionTimeout
        self.rateLimits = rateLimits
        self.expiredSessionStatus = expiredSessionStatus
    }
}
