"""storage commitment per delivery

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 00:01:10.443862
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('commitment', sa.Enum('requested', 'committed', 'failed', name='commitmentstate', native_enum=False, length=20), nullable=True))
        batch_op.add_column(sa.Column('commitment_uid', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('commitment_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('commitment_error', sa.Text(), nullable=True))
        batch_op.create_index(batch_op.f('ix_deliveries_commitment_uid'), ['commitment_uid'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_deliveries_commitment_uid'))
        batch_op.drop_column('commitment_error')
        batch_op.drop_column('commitment_at')
        batch_op.drop_column('commitment_uid')
        batch_op.drop_column('commitment')

