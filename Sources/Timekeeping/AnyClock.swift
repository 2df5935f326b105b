/// The clock the daemon's logic reads and waits on, whatever clock is behind it: production passes
/// `AnyClock.continuous`, tests a manual clock they advance by hand (weeks of renewals in milliseconds).
///
/// A concrete type rather than `any Clock<Duration>`, because instants must be stored (the registry's leases,
/// the published snapshots), compared and passed to generic APIs (`AsyncTimerSequence`), which an existential's
/// associated `Instant` does not allow. An instant is the time elapsed since the clock's origin, so instants of two `AnyClock`s over one clock
/// compare only when they share that origin: every `AnyClock` over `ContinuousClock` does (`continuous`, or
/// `init(ContinuousClock())`), and a test shares its one `AnyClock` over its manual clock.
///
/// pointfreeco/swift-clocks has the same type; its releases need a newer Swift than ours and bring two more
/// packages, for forty lines.
public struct AnyClock: Clock {
    public struct Instant: InstantProtocol {
        /// Time since the clock's origin.
        public let offset: Duration

        public init(offset: Duration) { self.offset = offset }
        public func advanced(by duration: Duration) -> Instant { Instant(offset: offset + duration) }
        public func duration(to other: Instant) -> Duration { other.offset - offset }
        public static func < (lhs: Instant, rhs: Instant) -> Bool { lhs.offset < rhs.offset }
        public static func + (lhs: Instant, rhs: Duration) -> Instant { lhs.advanced(by: rhs) }
        public static func - (lhs: Instant, rhs: Duration) -> Instant { lhs.advanced(by: .zero - rhs) }
        public static func - (lhs: Instant, rhs: Instant) -> Duration { rhs.duration(to: lhs) }
    }

    private let elapsed: @Sendable () -> Duration
    private let sleeper: @Sendable (_ offset: Duration, _ tolerance: Duration?) async throws -> Void
    public let minimumResolution: Duration

    /// The real monotonic clock, which production runs on; every use shares one origin.
    public static let continuous = AnyClock(ContinuousClock())

    /// `clock`, measured from now (from the process's one origin for `ContinuousClock`).
    public init<C: Clock>(_ clock: C) where C.Duration == Duration {
        let origin = continuousOrigin as? C.Instant ?? clock.now  // ContinuousClock's instants: the shared origin
        elapsed = { origin.duration(to: clock.now) }
        sleeper = { offset, tolerance in try await clock.sleep(until: origin.advanced(by: offset), tolerance: tolerance) }
        minimumResolution = clock.minimumResolution
    }

    public var now: Instant { Instant(offset: elapsed()) }

    public func sleep(until deadline: Instant, tolerance: Duration? = nil) async throws {
        try await sleeper(deadline.offset, tolerance)
    }
}

/// The origin every `AnyClock` over `ContinuousClock` measures from, so their instants compare.
private let continuousOrigin = ContinuousClock.now
