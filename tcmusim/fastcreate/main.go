// overlaybd-create's common case (-s, -u PARENT, DATA INDEX VSIZE) without a Python start-up:
// the same files, message and status as `python -m tcmusim.tools overlaybd-create`. Any other
// arguments, and files that already exist, are handed to the Python stand-in (TCMUSIM_PYTHON).
package main

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"unicode/utf8"
)

const (
	headerSize = 4096
	gib        = 1 << 30
	marker     = "TCMUSIM1"
)

var lsmtMagic = [3]uint64{564050879402828, 5478704352671792741, 9993152565363659426}

type request struct {
	sparse              bool
	parentUUID          string
	dataFile, indexFile string
	virtualSize         int64
}

func main() {
	req, ok := parse(os.Args[1:])
	if !ok || exists(req.dataFile) || exists(req.indexFile) {
		handOver()
	}
	if err := create(req); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(255)
	}
	fmt.Println("lsmt_create has created files SUCCESSFULLY")
}

// parse accepts only what it is sure argparse reads the same way.
func parse(args []string) (request, bool) {
	var req request
	var positional []string
	for i := 0; i < len(args); i++ {
		switch arg := args[i]; {
		case arg == "-s":
			req.sparse = true
		case arg == "-u" && i+1 < len(args) && !strings.HasPrefix(args[i+1], "-"):
			i++
			req.parentUUID = args[i]
		case arg != "" && !strings.HasPrefix(arg, "-"):
			positional = append(positional, arg)
		default:
			return req, false
		}
	}
	if len(positional) != 3 || !plainPath(positional[0]) || !plainPath(positional[1]) {
		return req, false
	}
	if !utf8.ValidString(req.parentUUID) || len(req.parentUUID) > 256 {
		return req, false
	}
	vsize, err := strconv.ParseInt(positional[2], 10, 64)
	if err != nil || vsize < 0 || vsize > 1<<20 || strings.TrimLeft(positional[2], "0123456789") != "" {
		return req, false
	}
	req.dataFile, req.indexFile, req.virtualSize = positional[0], positional[1], vsize*gib
	return req, true
}

// plainPath: a path that Python's pathlib names exactly as given (its error messages quote it).
func plainPath(path string) bool {
	if !utf8.ValidString(path) || filepath.Clean(path) != path {
		return false
	}
	for _, part := range strings.Split(path, "/") {
		if part == ".." {
			return false
		}
	}
	return true
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

func handOver() {
	python := os.Getenv("TCMUSIM_PYTHON")
	argv := append([]string{python, "-m", "tcmusim.tools", "overlaybd-create"}, os.Args[1:]...)
	err := syscall.Exec(python, argv, os.Environ())
	fmt.Fprintf(os.Stderr, "overlaybd-create: cannot run %s: %v\n", python, err)
	os.Exit(255)
}

func create(req request) error {
	dataUUID := newUUID()
	data := map[string]string{
		"kind": `"data"`, "uuid": quote(dataUUID), "parent_uuid": quote(req.parentUUID),
		"data_uuid": `""`, "sparse": strconv.FormatBool(req.sparse),
	}
	if err := writeLayer(req.dataFile, data, req.virtualSize, headerSize+req.virtualSize); err != nil {
		return err
	}
	index := map[string]string{
		"kind": `"index"`, "uuid": quote(newUUID()), "parent_uuid": `""`,
		"data_uuid": quote(dataUUID), "sparse": "false",
	}
	return writeLayer(req.indexFile, index, req.virtualSize, -1)
}

func writeLayer(path string, fields map[string]string, virtualSize, truncate int64) error {
	header := encode(fields, virtualSize)
	fd, err := syscall.Open(path, syscall.O_RDWR|syscall.O_CREAT|syscall.O_EXCL|syscall.O_CLOEXEC, 0o644)
	if err != nil {
		return failure(path, err)
	}
	defer syscall.Close(fd)
	if _, err := syscall.Pwrite(fd, header, 0); err != nil {
		return failure("None", err)
	}
	if truncate >= 0 {
		if err := syscall.Ftruncate(fd, truncate); err != nil {
			return failure("None", err)
		}
	}
	return nil
}

// encode: tcmusim.layerfmt.Header.encode (json.dumps, sort_keys, compact separators).
func encode(fields map[string]string, virtualSize int64) []byte {
	document := map[string]string{
		"format": `"tcmusim-overlaybd"`, "version": "1", "virtual_size": strconv.FormatInt(virtualSize, 10),
		"initialized": "false", "algorithm": `""`, "block_size": "0", "table_offset": "0",
		"extent_count": "0", "message": `""`, "extra": "{}",
	}
	for key, value := range fields {
		document[key] = value
	}
	keys := make([]string, 0, len(document))
	for key := range document {
		keys = append(keys, key)
	}
	sort.Strings(keys)
	members := make([]string, len(keys))
	for i, key := range keys {
		members[i] = quote(key) + ":" + document[key]
	}
	raw := make([]byte, 24, headerSize)
	for i, value := range lsmtMagic {
		binary.LittleEndian.PutUint64(raw[i*8:], value)
	}
	raw = append(raw, marker...)
	raw = append(raw, "{"+strings.Join(members, ",")+"}"...)
	return append(raw, make([]byte, headerSize-len(raw))...)
}

// quote: a JSON string as Python's json.dumps writes it (ensure_ascii).
func quote(text string) string {
	var out strings.Builder
	out.WriteByte('"')
	for _, r := range text {
		switch {
		case r == '"':
			out.WriteString(`\"`)
		case r == '\\':
			out.WriteString(`\\`)
		case r == '\n':
			out.WriteString(`\n`)
		case r == '\r':
			out.WriteString(`\r`)
		case r == '\t':
			out.WriteString(`\t`)
		case r == '\b':
			out.WriteString(`\b`)
		case r == '\f':
			out.WriteString(`\f`)
		case r < 0x20 || (r > 0x7e && r < 0x10000):
			fmt.Fprintf(&out, `\u%04x`, r)
		case r >= 0x10000:
			r -= 0x10000
			fmt.Fprintf(&out, `\u%04x\u%04x`, 0xd800+(r>>10), 0xdc00+(r&0x3ff))
		default:
			out.WriteRune(r)
		}
	}
	out.WriteByte('"')
	return out.String()
}

func newUUID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// failure: the stand-in's "failed to open file" message, with glibc's strerror wording.
func failure(path string, err error) error {
	errno, ok := err.(syscall.Errno)
	if !ok {
		return fmt.Errorf("failed to open file '%s', %v", path, err)
	}
	text := errno.Error()
	if text != "" {
		text = strings.ToUpper(text[:1]) + text[1:]
	}
	return fmt.Errorf("failed to open file '%s', %d: %s", path, int(errno), text)
}
