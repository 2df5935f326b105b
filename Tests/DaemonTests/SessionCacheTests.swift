import Foundation
import SessiondClient
import TestThreads
import Testing
import TestSupport

/// `SessionCache` (SessiondClient) against the real daemon: tokens from memory between rotations, never one within
/// its margin of expiry, and a token reported invalid is not served once the daemon moved on. Sessions of 20 s
/// renew about every 15 s, so 35 s of asking live through two or three rotations.
@Suite(.ownThread) struct SessionCacheTests {
    @Test(.tags(.long)) func servesFromMemoryButNeverPastTheMargin() async throws {
        let running = try await RunningDaemon.start(sessionTimeout: 20, provider: false)
        defer { running.stop() }
        let cache = SessionCache(path: running.socket, margin: 2)
        defer { cache.close() }
        // The asking loop blocks its thread by design (the client is synchronous): the suite's own thread.
        let (late, tokens) = try { () throws -> ([String], [String]) in
            var late: [String] = []
            var tokens: [String] = []
            let began = ContinuousClock.now
            while ContinuousClock.now - began < .seconds(35) {
                let session = try cache.session("ops")
                let expires = try #require(session["expires_at"].flatMap(SessionCache.date))
                if Date() >= expires.addingTimeInterval(-2) { late.append("\(session["generation"] ?? "?") \(expires)") }
                if let token = session["token"], !tokens.contains(token) { tokens.append(token) }
                usleep(2_000)
            }
            return (late, tokens)
        }()
        #expect(late.isEmpty, "never within the margin of expiry: \(late)")
        #expect(tokens.count >= 2, "it followed the rotations")
        let (hits, misses) = cache.counts
        #expect(hits > 1_000 && misses <= 12, "hits \(hits), misses \(misses): from memory between rotations")

        // A token reported invalid: the daemon renews and says so, and the cache stops serving it.
        let before = try cache.session("ops")
        let generation = try #require(before["generation"].flatMap { Int($0) })
        _ = try SessiondConnection(path: running.socket).call("session.report_invalid",
                                                             ["context": "ops", "generation": .integer(generation)])
        #expect(await eventually(within: .seconds(10)) { (try? cache.token("ops")).map { $0 != before["token"] } ?? false },
                "the cache stops serving the token reported invalid")
    }
}
