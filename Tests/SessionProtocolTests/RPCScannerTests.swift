import Foundation
import SessionProtocol
import TestThreads
import Testing

/// The token path's scanner against the full decoder: whatever it reads, the full decoder reads the same; what it
/// cannot read with certainty it leaves to the full decoder. Lines are built from the pieces where the two could
/// part ways (ids at the edges of JSON numbers, escapes, duplicates, order, whitespace, trailing bytes).
@Suite(.ownThread) struct RPCScannerTests {
    @Test func readsThePlainShapesInAnyOrderAndSpacing() {
        let plain = #"{"jsonrpc":"2.0","id":1,"method":"session.get","params":{"context":"ops"}}"#
        #expect(RPCScanner.sessionGet(Array(plain.utf8)) == .init(id: .number("1"), context: "ops"))
        let spaced = #" { "params" : { "context" : "user-42" } , "method":"session.get", "id" : "req-7" ,"jsonrpc": "2.0" } "#
        #expect(RPCScanner.sessionGet(Array(spaced.utf8)) == .init(id: .string("req-7"), context: "user-42"))
        let nullId = #"{"jsonrpc":"2.0","id":null,"method":"session.get","params":{"context":"provider"}}"#
        #expect(RPCScanner.sessionGet(Array(nullId.utf8)) == .init(id: .null, context: "provider"))
    }

    @Test func neverReadsALineDifferentlyFromTheFullDecoder() {
        let ids = ["1", "0", "-0", "-7", "007", "1.0", "1e3", "2E1", "18446744073709551615", "123456789012345678901234567890",
                   "\"a\"", "\"\"", "\"a\\\"b\"", "\"\\u0041\"", "\"é\"", "null", "true", "false", "[1]", "{}", "+1", "01"]
        let contexts = ["\"ops\"", "\"\"", "\"user-1\"", "\"a\\u0041\"", "\"é\"", "\"a\\\\b\"", "1", "null", "[\"ops\"]", "\"a b\""]
        let methods = ["\"session.get\"", "\"session.renew\"", "\"Session.get\"", "\"session.get \"", "\"session\\u002eget\"", "1"]
        let versions = ["\"2.0\"", "\"2\"", "2.0", "\"2.0 \"", "null"]
        var generator = SeededGenerator(seed: 16_172)
        var read = 0
        var lines = 0
        for _ in 0..<20_000 {
            // Each piece is the plain one most of the time, so plain lines are common and every odd piece meets
            // plain ones too.
            func pick(_ pieces: [String]) -> String {
                Int.random(in: 0..<10, using: &generator) < 6 ? pieces[0] : pieces.randomElement(using: &generator)!
            }
            var members = [("jsonrpc", pick(versions)), ("id", pick(ids)), ("method", pick(methods))]
            let params: String
            switch Int.random(in: 0..<16, using: &generator) {
            case 0: params = "{}"
            case 1: params = "{\"context\":\"ops\",\"force\":true}"
            case 2: params = "{\"context\":\"ops\",\"context\":\"other\"}"
            case 3: params = "[\"ops\"]"
            default: params = "{\"context\":\(pick(contexts))}"
            }
            members.append(("params", params))
            switch Int.random(in: 0..<20, using: &generator) {
            case 0: members.removeFirst()
            case 1: members.removeLast()
            case 2: members.append(("id", "2"))
            case 3: members.append(("extra", "1"))
            case 4: members.append(("method", "\"session.renew\""))
            default: break
            }
            members.shuffle(using: &generator)
            let space = [" ", "", "\t", "  "]
            var line = space.randomElement(using: &generator)! + "{"
            line += members.map { name, value in
                space.randomElement(using: &generator)! + "\"\(name)\"" + space.randomElement(using: &generator)! + ":"
                    + space.randomElement(using: &generator)! + value
            }.joined(separator: ",")
            line += "}" + pick(["", " ", "x", "}", ",", "\r", "\t"])
            lines += 1
            guard let scanned = RPCScanner.sessionGet(Array(line.utf8)) else { continue }
            read += 1
            guard case .success(let full) = RPCCodec.parse(Array(line.utf8)) else {
                Issue.record("the scanner read a line the full decoder refuses: \(line)")
                continue
            }
            #expect(full.id == scanned.id, "\(line)")
            #expect(full.method == "session.get", "\(line)")
            #expect(full.string("context") == scanned.context && full.params.count == 1, "\(line)")
        }
        // The scanner must still read the common case: a fair share of the lines are plain session.gets.
        #expect(read > 1_000, "read \(read) of \(lines)")
    }
}

/// A small deterministic generator (SplitMix64), so a failing line can be found again.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
