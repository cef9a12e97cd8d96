# Migration rounds: until the host creates $M/stop, one process appends to a held file, one
# reads held/data.bin again and again and compares its checksum with the first read (a reply
# page the dirty log missed would show up as a mismatch after a switch-over), one walks tree/.
M=/mnt
exec 3>>$M/held/log.txt
SHA=$(sha256sum < $M/held/data.bin | cut -d' ' -f1)
( i=0; while [ ! -e $M/stop ]; do echo "line $i" >&3; i=$((i+1)); done; echo "VALUE writer_lines $i" ) &
WRITER=$!
( n=0; bad=0
  while [ ! -e $M/stop ]; do
      s=$(sha256sum < $M/held/data.bin | cut -d' ' -f1)
      [ "$s" = "$SHA" ] || bad=$((bad + 1))
      n=$((n + 1))
  done
  echo "VALUE reads $n"; echo "VALUE read_mismatches $bad" ) &
READER=$!
( n=0; while [ ! -e $M/stop ]; do find $M/tree > /dev/null; n=$((n + 1)); done; echo "VALUE walks $n" ) &
WALKER=$!
echo "VALUE ready 1"
wait $WRITER
wait $READER
wait $WALKER
check held_write_after sh -c 'echo "after" >&3'
value data_sha256 sh -c "sha256sum < $M/held/data.bin | cut -d' ' -f1"
