"""breast and exam assessment per job

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05 12:20:16.905544
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('assessments',
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('exam_score', sa.Double(), nullable=False),
    sa.Column('exam_category', sa.Enum('low', 'intermediate', 'elevated', name='category', native_enum=False, length=20), nullable=False),
    sa.Column('right_score', sa.Double(), nullable=True),
    sa.Column('right_category', sa.Enum('low', 'intermediate', 'elevated', name='category', native_enum=False, length=20), nullable=True),
    sa.Column('left_score', sa.Double(), nullable=True),
    sa.Column('left_category', sa.Enum('low', 'intermediate', 'elevated', name='category', native_enum=False, length=20), nullable=True),
    sa.Column('low_threshold', sa.Double(), nullable=False),
    sa.Column('elevated_threshold', sa.Double(), nullable=False),
    sa.Column('assessed_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ),
    sa.PrimaryKeyConstraint('job_id')
    )
    with op.batch_alter_table('assessments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_assessments_exam_score'), ['exam_score'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('assessments', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_assessments_exam_score'))

    op.drop_table('assessments')
