/// One `-----BEGIN X-----` ... `-----END X-----` block of a PEM text.
struct PEMBlock: Sendable, Equatable {
    /// The label between `BEGIN ` and the dashes, e.g. `PUBLIC KEY`, `RSA PRIVATE KEY`, `CERTIFICATE`.
    let label: String
    /// The whole block from its BEGIN line through its END line, followed by a newline.
    let text: String

    /// Every block in `text`, in order. Text between blocks (comments, `Bag Attributes`) is ignored, as OpenSSL
    /// does. Throws when a BEGIN line has no matching END line.
    static func blocks(in text: String) throws -> [PEMBlock] {
        var blocks: [PEMBlock] = []
        var current: (label: String, lines: [Substring])?
        for rawLine in text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" }) {
            let line = rawLine.hasSuffix("\r") ? rawLine.dropLast() : rawLine
            let trimmed = line.trimmingSpaces
            if let open = current {
                current?.lines.append(trimmed)
                if trimmed.hasPrefix("-----END ") {
                    guard trimmed == "-----END \(open.label)-----" else {
                        throw CryptoError(.invalidPEM, "PEM block '\(open.label)' ends with a mismatched END line")
                    }
                    blocks.append(PEMBlock(label: open.label, text: (current?.lines ?? []).joined(separator: "\n") + "\n"))
                    current = nil
                }
            } else if trimmed.hasPrefix("-----BEGIN "), trimmed.hasSuffix("-----"), trimmed.count > 16 {
                let label = String(trimmed.dropFirst("-----BEGIN ".count).dropLast(5))
                current = (label, [trimmed])
            }
        }
        if let open = current {
            throw CryptoError(.invalidPEM, "PEM block '\(open.label)' has no END line (truncated?)")
        }
        return blocks
    }
}

extension Substring {
    fileprivate var trimmingSpaces: Substring {
        var s = self
        while let first = s.first, first == " " || first == "\t" { s.removeFirst() }
        while let last = s.last, last == " " || last == "\t" { s.removeLast() }
        return s
    }
}
