. "$HUSK_E2E_DIR/lib/assert.sh"
export HUSK_DATA_DIR=$WORK/husk-data HUSK_RUN_DIR=$WORK/husk-run PATH="$PATH:/husk/bin"
printf 'ls -l /proc/self/fd/ /dev/pts; stty -a; echo TERM=$TERM; tty\nexit 6\n' | husk-pty 33 101 -- husk run --rm -it busybox sh
echo "rc=$?"
husk run --rm -t busybox sh -c 'ls -l /proc/self/fd/; tty'
for f in $HUSK_DATA_DIR/containers/*/console.log; do cat $f; done
