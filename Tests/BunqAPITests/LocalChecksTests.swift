import BunqAPI
import BunqSandbox
import Foundation
import TestThreads
import Testing
import TestSupport
import Timekeeping

@Suite(.ownThread) struct LocalChecksTests {
    @Test func psd2MaterialIsRefusedBeforeAnyCallNamingTheFile() async throws {
        let good = try makeEIDAS()
        let other = try makeEIDAS()
        let noRoles = try makeEIDAS(commonName: "My App")
        let expiringSoon = try makeEIDAS(days: 10)
        func refusal(_ certificate: String, _ key: String, now: Date = Date()) -> PSD2MaterialError? {
            do {
                _ = try PSD2Material(certificatePEM: certificate, certificatePath: "/etc/bunq-sessiond/eidas-cert.pem",
                                     privateKeyPEM: key, privateKeyPath: "/etc/bunq-sessiond/eidas-key.pem", now: now)
                return nil
            } catch {
                return error
            }
        }
        let mismatched = try #require(refusal(good.certificate, other.key))
        #expect(mismatched.file == "/etc/bunq-sessiond/eidas-key.pem" && mismatched.reason.contains("does not belong"))
        let roles = try #require(refusal(noRoles.certificate, noRoles.key))
        #expect(roles.file.hasSuffix("eidas-cert.pem") && roles.reason.contains("neither AISP nor PISP"))
        let expired = try #require(refusal(good.certificate, good.key, now: Date().addingTimeInterval(400 * 86_400)))
        #expect(expired.reason.contains("expired"))
        let garbage = try #require(refusal("not a certificate", good.key))
        #expect(garbage.file.hasSuffix("eidas-cert.pem"))
        // Expiring within 30 days registers, with a warning.
        let soon = try PSD2Material(certificatePEM: expiringSoon.certificate, certificatePath: "soon.pem",
                                    privateKeyPEM: expiringSoon.key, privateKeyPath: "soon-key.pem")
        #expect(soon.warnings.count == 1 && soon.warnings[0].contains("soon.pem expires in"))
    }

    @Test func endpointsRefusePlainHTTPBeyondLoopback() throws {
        #expect(throws: BunqEndpointError.self) {
            try BunqEndpoints(apiBaseURL: "http://api.bunq.com/v1/", oauthAuthorizeURL: "https://oauth.bunq.com/auth",
                              oauthTokenURL: "https://api.oauth.bunq.com/v1/token")
        }
        do {
            _ = try BunqEndpoints(apiBaseURL: "https://api.bunq.com/v1/", oauthAuthorizeURL: "https://oauth.bunq.com/auth",
                                  oauthTokenURL: "http://10.0.0.5/v1/token")
            Issue.record("plain http to a non-loopback host was accepted")
        } catch {
            #expect(error.key == "oauth_token_url" && error.description.contains("http://10.0.0.5"))
        }
        for host in ["127.0.0.1:8089", "localhost:1", "[::1]:8089", "127.10.0.3"] {
            #expect(throws: Never.self) { try BunqEndpoints.emulator("http://\(host)") }
        }
        #expect(throws: BunqEndpointError.self) { try BunqEndpoints.emulator("ftp://127.0.0.1") }
        #expect(BunqEndpoints.preset(.production).apiBaseURL == "https://api.bunq.com/v1/")
        #expect(BunqEndpoints.preset(.sandbox).oauthTokenURL == "https://api-oauth.sandbox.bunq.com/v1/token")
    }

    /// On a manual clock: exact slots, and a wait that only the clock's advance releases.
    @Test func rateLimiterSpreadsABurstInsteadOfFailingIt() async throws {
        let manual = ManualClock()
        let clock = manual.erased
        let limiter = BunqRateLimiter(clock: clock) { method, _ in
            method == "GET" ? .init(calls: 2, window: .milliseconds(300)) : nil
        }
        let start = clock.now
        var offsets: [Duration] = []
        for _ in 0..<6 { offsets.append(await limiter.reserve(method: "GET", endpoint: "user").at - start) }
        // Each window is kept 50 ms (at least 5%) stricter than bunq's: 350 ms apart.
        #expect(offsets == [.zero, .zero, .milliseconds(350), .milliseconds(350), .milliseconds(700), .milliseconds(700)])
        #expect(await limiter.reserve(method: "POST", endpoint: "user").at == clock.now)

        // A caller that must wait sleeps on the limiter's clock until its slot: the 7th GET waits 1,050 ms.
        let acquired = Flag()
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                _ = try await limiter.acquire(method: "GET", endpoint: "user")
                acquired.set()
            }
            #expect(await eventually(within: .seconds(10), every: .milliseconds(1)) { manual.sleeping == 1 })
            manual.advance(by: .milliseconds(1_049))
            #expect(!acquired.isSet, "one millisecond before its slot the caller still waits")
            manual.advance(by: .milliseconds(1))
            try await group.waitForAll()
            #expect(acquired.isSet)
        }

        let bunq = BunqRateLimiter(mode: .bunq, clock: clock)
        let first = await bunq.reserve(method: "POST", endpoint: "session-server").at
        let second = await bunq.reserve(method: "POST", endpoint: "session-server").at
        #expect(second - first == .seconds(31.5), "session-server: one per 30 s (and a 5% margin), shared by every identity")
        // A 429 pushes that endpoint's window back by a whole window; an exempt endpoint is not limited here.
        let scaled = BunqRateLimiter(mode: .bunq, scale: 0.1, exempt: [BunqRateLimiter.sessionServer], clock: clock)
        await scaled.rateLimited(method: "GET", endpoint: "user")
        #expect(await scaled.reserve(method: "GET", endpoint: "user").at - clock.now == .milliseconds(350))
        #expect(await scaled.reserve(method: "GET", endpoint: "user/{id}").at == clock.now)
        for _ in 0..<3 {
            #expect(await scaled.reserve(method: "POST", endpoint: "session-server").at == clock.now,
                    "the keeper's scheduler grants session-server itself")
        }
        #expect(BunqRateLimiter.endpointKey("user/1822179/oauth-client/42") == "user/{id}/oauth-client/{id}")
        #expect(BunqRateLimiter.endpointKey("session-server") == "session-server")
    }

    /// bunq counts a call when it arrives. Calls planned in one burst that a loaded machine ran late, or that bunq
    /// answered late, must not let the next window's calls arrive within bunq's window of them: a call checks
    /// again as it leaves, against the calls before it as they went and were answered.
    @Test func callsThatLeftLateHoldTheNextCallsBack() async throws {
        let manual = ManualClock()
        let clock = manual.erased
        let limiter = BunqRateLimiter(clock: clock) { _, _ in .init(calls: 3, window: .milliseconds(300)) }
        let start = clock.now
        var planned: [BunqRateLimiter.Slot] = []
        for _ in 0..<6 { planned.append(await limiter.reserve(method: "GET", endpoint: "user")) }
        #expect(planned.map { $0.at - start } == [.zero, .zero, .zero, .milliseconds(350), .milliseconds(350), .milliseconds(350)])

        // The first three leave 80 ms late and are answered at 90 ms.
        manual.advance(by: .milliseconds(80))
        for slot in planned[0..<3] { #expect(await limiter.depart(slot) == .go) }
        manual.advance(by: .milliseconds(10))
        for slot in planned[0..<3] { await limiter.settle(slot) }
        // At 350 ms the next three are due, but bunq may have counted the first three as late as 90 ms: each
        // waits until 440 ms; the first to check again then goes, and the others wait once more.
        manual.advance(by: .milliseconds(260))
        var later: [BunqRateLimiter.Slot] = []
        for slot in planned[3..<6] {
            guard case .wait(let moved) = await limiter.depart(slot) else {
                Issue.record("a call left within 350 ms of calls answered at 90 ms")
                return
            }
            #expect(moved.at - start == .milliseconds(440))
            later.append(moved)
        }
        manual.advance(by: .milliseconds(90))
        var went = 0
        for slot in later where await limiter.depart(slot) == .go { went += 1 }
        #expect(went == 3, "at 440 ms all three fit: the first three left the window")

        // A caller with a deadline is told when to come back instead of waiting past it; nothing stays reserved.
        let late = await limiter.reserve(method: "GET", endpoint: "user")
        guard case .tooLate(let next) = await limiter.depart(late, notAfter: clock.now) else {
            Issue.record("a full window lets a fourth call go")
            return
        }
        #expect(next - start == .milliseconds(790))
        #expect(await limiter.nextSlot(method: "GET", endpoint: "user") - start == .milliseconds(790))
    }
}
