/// International bank account numbers (ISO 13616): the check a bank applies before it sends money anywhere.
enum IBAN {
    /// The IBAN without spaces, in capitals, when it is well formed (a country, two check digits, up to 30 letters
    /// and digits) and its check digits hold; else nil.
    static func normalized(_ text: String) -> String? {
        let iban = text.filter { $0 != " " }.uppercased()
        let characters = Array(iban)
        guard (15...34).contains(characters.count), characters[0...1].allSatisfy({ $0.isASCII && $0.isLetter }),
              characters[2...3].allSatisfy({ $0.isASCII && $0.isNumber }),
              characters.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber) }) else { return nil }
        let rearranged = String(characters[4...]) + String(characters[0...3])
        return remainder(rearranged) == 1 ? iban : nil
    }

    /// The text's value modulo 97, each letter read as two digits (A = 10 … Z = 35), as ISO 7064 MOD 97-10 does.
    static func remainder(_ text: String) -> Int {
        var remainder = 0
        for character in text.unicodeScalars {
            let value = character.value
            if (48...57).contains(value) {
                remainder = (remainder * 10 + Int(value - 48)) % 97
            } else if (65...90).contains(value) {
                remainder = (remainder * 100 + Int(value - 55)) % 97
            }
        }
        return remainder
    }
}
