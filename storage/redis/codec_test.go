package redis

import (
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
)

// FuzzWhoRoundTrip checks that any target, consumer name, pool name and
// session key come back from the packed who part unchanged.
func FuzzWhoRoundTrip(f *testing.F) {
	f.Add("shop.example", "worker-1", "residential", "")
	f.Add("", "a|b|c", "9:x|", "sess:1|2")
	f.Add("", "", "", "")
	f.Add("1:x", "ünïcode\x00nul", "12:", "::::")
	f.Fuzz(func(t *testing.T, target, cname, pname, sess string) {
		id := uuid.New()
		w, err := decodeWho(encodeWho(id, target, cname, pname, sess))
		if err != nil {
			t.Fatalf("decodeWho(encodeWho(%q, %q, %q, %q)): %v", target, cname, pname, sess, err)
		}
		if w != (leaseWho{consumer: id.String(), target: target, cname: cname, pname: pname, sess: sess}) {
			t.Fatalf("round trip of %q, %q, %q, %q gave %+v", target, cname, pname, sess, w)
		}
	})
}

func TestDecodeLeaseRejectsMalformed(t *testing.T) {
	id, proxy, pool, consumer := uuid.NewString(), uuid.NewString(), uuid.NewString(), uuid.New()
	who := encodeWho(consumer, "shop.example", "c", "p", "")
	good := "released|1700000000000100:tok:3,200,5000|1700000000999999|" + proxy + "|" + pool + "|2|" + consumer.String() + "|1700000000000000|" + who
	l, err := decodeLease(id, good)
	if err != nil {
		t.Fatalf("decodeLease(good): %v", err)
	}
	if l.ConsumerID != consumer || l.ProxyID.String() != proxy || l.ReleasedAt == nil || l.ConsumerName != "c" || l.PoolName != "p" ||
		l.Target != "shop.example" || l.Usage == nil || *l.Usage != (pharox.Usage{Requests: 3, BytesSent: 200, BytesReceived: 5000}) {
		t.Errorf("decodeLease(good) = %+v", l)
	}
	for name, record := range map[string]string{
		"too few fields":    "active||1700000000999999|" + proxy,
		"bad status":        strings.Replace(good, "released", "gone", 1),
		"bad expiry":        strings.Replace(good, "|1700000000999999|", "|soon|", 1),
		"bad proxy id":      strings.Replace(good, proxy, "not-a-uuid", 1),
		"who too short":     strings.TrimSuffix(good, who) + "abc",
		"who length beyond": strings.TrimSuffix(good, who) + consumer.String() + "9:c1:p0:",
		"who trailing":      good + "x",
		"bad usage":         strings.Replace(good, ":3,200,5000", ":3,200", 1),
	} {
		if _, err := decodeLease(id, record); err == nil {
			t.Errorf("%s: decodeLease(%q) succeeded", name, record)
		}
	}
}
